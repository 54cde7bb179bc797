import { randomUUID } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { errNotFound, GrpcCode } from "../base/errdefs.js";
import type { LoadedPlugin, PluginSet } from "../base/plugin.js";
import { parseFilters } from "../core/filters.js";
import type { Introspection } from "../gen/containerd/services/introspection/v1/introspection_pb.js";
import type { ServiceImpl } from "../grpc/service.js";

function toProto(l: LoadedPlugin) {
  const p = l.plugin;
  const initErr =
    l.status.state === "ok" ? undefined : { code: GrpcCode.Unknown, message: l.status.reason, details: [] };
  return {
    type: p.type,
    id: p.id,
    requires: p.requires ?? [],
    platforms: l.meta.platforms,
    exports: l.meta.exports,
    capabilities: l.meta.capabilities,
    initErr,
  };
}

/** The server UUID, created once and kept in the plugin's root so it survives restarts. */
export function loadOrCreateUUID(dir: string): string {
  const path = join(dir, "uuid");
  try {
    const u = readFileSync(path, "utf8").trim();
    if (u) return u;
  } catch {
    // first start: create it below
  }
  mkdirSync(dir, { recursive: true, mode: 0o711 });
  const u = randomUUID();
  writeFileSync(`${path}.tmp`, u, { mode: 0o644 });
  renameSync(`${path}.tmp`, path);
  return u;
}

function pidNamespaceInode(): bigint {
  try {
    return statSync("/proc/self/ns/pid", { bigint: true }).ino;
  } catch {
    return 0n;
  }
}

export function introspectionService(set: PluginSet, uuidDir: string): ServiceImpl<typeof Introspection> {
  let uuid: string | undefined;
  return {
    plugins(req) {
      const filter = parseFilters(req.filters);
      const plugins = set.loaded
        .filter((l) =>
          filter.match((fp) => {
            switch (fp[0]) {
              case "type":
                return l.plugin.type;
              case "id":
                return l.plugin.id;
              case "capabilities":
                return l.meta.capabilities.join(",");
              case "exports":
                return fp.length > 1 ? l.meta.exports[fp.slice(1).join(".")] : undefined;
              default:
                return undefined;
            }
          }),
        )
        .map(toProto);
      return { plugins };
    },
    server() {
      uuid ??= loadOrCreateUUID(uuidDir);
      return { uuid, pid: BigInt(process.pid), pidns: pidNamespaceInode(), deprecations: [] };
    },
    pluginInfo(req) {
      const l = set.find(req.type, req.id);
      if (!l) throw errNotFound(`plugin ${req.type}.${req.id}`);
      return { plugin: toProto(l) };
    },
  };
}
