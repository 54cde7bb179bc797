// The core plugins: event exchange, metadata DB (with namespaces and the namespaced content
// view), lease manager, and the gRPC services over them.
import { join } from "node:path";
import type { Plugin } from "../base/plugin.js";
import { PluginType, ServiceId } from "../base/plugin-types.js";
import type { LocalContentStore } from "../core/content/local.js";
import { MetadataContentStore } from "../core/content/metadata.js";
import { Exchange } from "../core/events/exchange.js";
import { LeaseStore } from "../core/leases/store.js";
import { MetadataDB } from "../core/metadata/db.js";
import { NamespaceStore } from "../core/namespaces/store.js";
import { Events } from "../gen/containerd/services/events/v1/events_pb.js";
import { Introspection } from "../gen/containerd/services/introspection/v1/introspection_pb.js";
import { Leases } from "../gen/containerd/services/leases/v1/leases_pb.js";
import { Namespaces } from "../gen/containerd/services/namespaces/v1/namespace_pb.js";
import { Version } from "../gen/containerd/services/version/v1/version_pb.js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { eventsService } from "../services/events.js";
import { healthService } from "../services/health.js";
import { introspectionService } from "../services/introspection.js";
import { leasesService } from "../services/leases.js";
import { namespacesService } from "../services/namespaces.js";
import { versionService } from "../services/version.js";
import { type GrpcServicePlugin, registration } from "./grpc.js";

export interface Metadata {
  db: MetadataDB;
  namespaces: NamespaceStore;
  content: MetadataContentStore;
}

export const eventPlugin: Plugin = {
  type: PluginType.Event,
  id: "exchange",
  init: () => new Exchange(),
};

interface BoltConfig {
  content_sharing_policy: string;
}

export const metadataPlugin: Plugin<BoltConfig> = {
  type: PluginType.Metadata,
  id: "bolt",
  requires: [PluginType.Content, PluginType.Event],
  defaults: () => ({ content_sharing_policy: "shared" }),
  init(ic): Metadata {
    const policy = ic.config.content_sharing_policy;
    if (policy !== "shared" && policy !== "isolated")
      throw new Error(`content_sharing_policy ${JSON.stringify(policy)} is not one of "shared", "isolated"`);
    // The file keeps containerd's plugin directory name; it holds SQLite, not bolt.
    const db = new MetadataDB(join(ic.root, "meta.db"), { log: ic.log });
    ic.onClose(() => db.close());
    const events = ic.get<Exchange>(PluginType.Event);
    const namespaces = new NamespaceStore(db, events);
    const backend = ic.get<LocalContentStore>(PluginType.Content, "content");
    const content = new MetadataContentStore(db, backend, namespaces, events, policy);
    return { db, namespaces, content };
  },
};

export const leasePlugin: Plugin = {
  type: PluginType.Lease,
  id: "manager",
  requires: [PluginType.Metadata],
  init(ic) {
    const md = ic.get<Metadata>(PluginType.Metadata);
    return new LeaseStore(md.db, md.namespaces);
  },
};

/** A service plugin exposes a local implementation; its gRPC plugin only adapts it. */
function servicePlugin<T>(
  id: string,
  requires: string[],
  make: (ic: Parameters<Plugin["init"]>[0]) => T,
): Plugin {
  return { type: PluginType.Service, id, requires, init: make };
}

function grpcPlugin(
  id: string,
  requires: string[],
  make: (ic: Parameters<Plugin["init"]>[0]) => GrpcServicePlugin,
): Plugin {
  return { type: PluginType.GRPC, id, requires, init: make };
}

export const corePlugins: Plugin[] = [
  eventPlugin,
  metadataPlugin,
  leasePlugin,
  servicePlugin(
    ServiceId.Namespaces,
    [PluginType.Event, PluginType.Metadata],
    (ic) => ic.get<Metadata>(PluginType.Metadata).namespaces,
  ),
  servicePlugin(ServiceId.Leases, [PluginType.Lease], (ic) => ic.get<LeaseStore>(PluginType.Lease)),
  servicePlugin(ServiceId.Introspection, ["*"], (ic) => ic.plugins),
  grpcPlugin("version", [], (ic) => ({
    services: [registration(Version, versionService(ic.daemon.version, ic.daemon.revision))],
  })),
  grpcPlugin("healthcheck", [], () => ({
    services: [
      registration(
        Health,
        healthService(() => true),
      ),
    ],
  })),
  grpcPlugin("events", [PluginType.Event], (ic) => ({
    services: [registration(Events, eventsService(ic.get<Exchange>(PluginType.Event)))],
  })),
  grpcPlugin("namespaces", [PluginType.Service], (ic) => ({
    services: [
      registration(
        Namespaces,
        namespacesService(ic.get<NamespaceStore>(PluginType.Service, ServiceId.Namespaces)),
      ),
    ],
  })),
  grpcPlugin("leases", [PluginType.Service], (ic) => ({
    services: [registration(Leases, leasesService(ic.get<LeaseStore>(PluginType.Service, ServiceId.Leases)))],
  })),
  grpcPlugin("introspection", [PluginType.Service], (ic) => ({
    services: [
      registration(
        Introspection,
        introspectionService(ic.plugins, join(ic.daemon.root, "io.containerd.grpc.v1.introspection")),
      ),
    ],
  })),
];
