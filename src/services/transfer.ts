// The Transfer gRPC service (containerd 2.x): registry → image store transfers, i.e. a daemon-side
// pull. Source and destination arrive as Anys; progress goes to a stream registered on the
// Streaming service; credentials are asked for on the resolver's auth stream, as ctr 2.x answers.
import { create } from "@bufbuild/protobuf";
import { type Any, anyIs, anyPack, anyUnpack, EmptySchema } from "@bufbuild/protobuf/wkt";
import { errInvalidArgument, errNotImplemented } from "../base/errdefs.js";
import type { Logger } from "../base/log.js";
import type { Platform } from "../base/platforms.js";
import { normalizePlatform } from "../base/platforms.js";
import { type ProgressEvent, type PullDeps, pull } from "../core/pull/pull.js";
import { push } from "../core/pull/push.js";
import type { AnyStream, StreamManager } from "../core/pull/streams.js";
import { RegistryClient } from "../core/remotes/client.js";
import { type CriRegistrySettings, criHostsOptions } from "../core/remotes/cri-registry.js";
import type { Credentials } from "../core/remotes/hosts.js";
import type { Transfer } from "../gen/containerd/services/transfer/v1/transfer_pb.js";
import { ImageStoreSchema } from "../gen/containerd/types/transfer/imagestore_pb.js";
import { ProgressSchema } from "../gen/containerd/types/transfer/progress_pb.js";
import {
  AuthRequestSchema,
  AuthResponseSchema,
  AuthType,
  OCIRegistrySchema,
  type RegistryResolver,
} from "../gen/containerd/types/transfer/registry_pb.js";
import type { ServiceImpl } from "../grpc/service.js";

export interface LocalTransferConfig {
  max_concurrent_downloads: number;
  max_concurrent_uploaded_layers?: number;
  /** hosts.toml root used when a request names none (ctr's --hosts-dir default). */
  config_path: string;
  /** Snapshotter for unpacks that name none. */
  default_snapshotter: string;
}

/** The io.containerd.transfer.v1 "local" plugin's instance. */
export interface LocalTransfer {
  deps: PullDeps;
  config: LocalTransferConfig;
  /** The CRI plugin's registry settings: used when neither the request nor config_path names hosts. */
  criRegistry?: CriRegistrySettings;
  log: Logger;
}

/** Credentials asked for on the client's auth stream, once per host, one question at a time. */
function streamCredentials(stream: AnyStream, reference: string) {
  const cache = new Map<string, Credentials | undefined>();
  let chain: Promise<unknown> = Promise.resolve();
  return (host: string): Promise<Credentials | undefined> => {
    const p = chain.then(async () => {
      if (cache.has(host)) return cache.get(host);
      stream.send(anyPack(AuthRequestSchema, create(AuthRequestSchema, { host, reference })));
      const a = await stream.recv();
      let creds: Credentials | undefined;
      if (a && anyIs(a, AuthResponseSchema)) {
        const r = anyUnpack(a, AuthResponseSchema)!;
        if (r.authType === AuthType.CREDENTIALS) creds = { username: r.username, password: r.secret };
        else if (r.authType === AuthType.REFRESH) creds = { identityToken: r.secret };
      }
      cache.set(host, creds);
      return creds;
    });
    chain = p.catch(() => {});
    return p;
  };
}

const toPlatform = (p: { os: string; architecture: string; variant: string }): Platform =>
  normalizePlatform({ os: p.os, architecture: p.architecture, variant: p.variant });

export function transferService(local: LocalTransfer, streams: StreamManager): ServiceImpl<typeof Transfer> {
  return {
    async transfer(req, ctx) {
      const ns = ctx.namespace();
      const src: Any | undefined = req.source;
      const dst: Any | undefined = req.destination;
      if (!src || !dst) throw errInvalidArgument("source and destination are required");
      const pushing = anyIs(src, ImageStoreSchema) && anyIs(dst, OCIRegistrySchema);
      if (!pushing && !(anyIs(src, OCIRegistrySchema) && anyIs(dst, ImageStoreSchema)))
        throw errNotImplemented(
          `transfer from ${src.typeUrl.split("/").pop()} to ${dst.typeUrl.split("/").pop()} is not supported`,
        );
      const reg = anyUnpack(pushing ? dst : src, OCIRegistrySchema)!;
      const store = anyUnpack(pushing ? src : dst, ImageStoreSchema)!;
      if (!reg.reference) throw errInvalidArgument("reference is required");
      if (pushing && !store.name) throw errInvalidArgument("the image store source names no image");
      const resolver: RegistryResolver | undefined = reg.resolver;

      const progressStream = req.options?.progressStream
        ? streams.get(ns, req.options.progressStream)
        : undefined;
      const authStream = resolver?.authStream ? streams.get(ns, resolver.authStream) : undefined;
      const hostDir = resolver?.hostDir || local.config.config_path;
      const plainHttp = resolver?.defaultScheme === "http";
      // CRI's registry tables describe where to pull from (mirrors are pull-only); pushes go to the
      // registry named, with credentials from the same config.
      const cri = hostDir || pushing ? undefined : local.criRegistry;
      const asked = authStream ? streamCredentials(authStream, reg.reference) : undefined;
      const configured = local.criRegistry;
      const headers: Record<string, string[]> = { ...(cri?.headers ?? {}) };
      for (const [k, v] of Object.entries(resolver?.headers ?? {})) headers[k.toLowerCase()] = [v];
      const client = new RegistryClient({
        logger: local.log,
        hosts: {
          ...(cri
            ? criHostsOptions(cri, plainHttp)
            : { configPaths: hostDir ? [hostDir] : undefined, plainHttp }),
          headers,
        },
        // The client's answer first; then what config.toml holds for that host.
        credentials:
          asked || configured
            ? async (host) => (await asked?.(host)) ?? configured?.credentials(host)
            : undefined,
      });
      const progress = progressStream
        ? (ev: ProgressEvent) =>
            progressStream.send(
              anyPack(
                ProgressSchema,
                create(ProgressSchema, {
                  event: ev.event,
                  name: ev.name,
                  parents: ev.parents ?? [],
                  progress: BigInt(ev.progress ?? 0),
                  total: BigInt(ev.total ?? 0),
                  desc: ev.desc && {
                    mediaType: ev.desc.mediaType,
                    digest: ev.desc.digest,
                    size: BigInt(ev.desc.size),
                  },
                }),
              ),
            )
        : undefined;
      try {
        if (pushing) {
          await push(local.deps, {
            namespace: ns,
            image: store.name,
            ref: reg.reference,
            client,
            platforms: store.platforms.map(toPlatform),
            maxConcurrentUploads: local.config.max_concurrent_uploaded_layers ?? 3,
            progress,
            signal: ctx.signal,
          });
          return create(EmptySchema);
        }
        await pull(local.deps, {
          namespace: ns,
          ref: reg.reference,
          client,
          name: store.name || undefined,
          labels: { ...store.labels },
          platforms: store.platforms.map(toPlatform),
          allMetadata: store.allMetadata,
          unpacks: store.unpacks.map((u) => ({
            platform: u.platform
              ? toPlatform(u.platform)
              : toPlatform({ os: "", architecture: "", variant: "" }),
            snapshotter: u.snapshotter || local.config.default_snapshotter,
          })),
          maxConcurrentDownloads: local.config.max_concurrent_downloads,
          progress,
          signal: ctx.signal,
        });
      } finally {
        progressStream?.close();
        authStream?.close();
        await client.close().catch(() => {});
      }
      return create(EmptySchema);
    },
  };
}
