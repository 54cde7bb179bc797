// containerd's plugin type strings: a containerd config.toml and `ctr plugins ls` read the same.
export const PluginType = {
  Internal: "io.containerd.internal.v1",
  Runtime: "io.containerd.runtime.v1",
  RuntimeV2: "io.containerd.runtime.v2",
  Service: "io.containerd.service.v1",
  GRPC: "io.containerd.grpc.v1",
  TTRPC: "io.containerd.ttrpc.v1",
  Snapshot: "io.containerd.snapshotter.v1",
  TaskMonitor: "io.containerd.monitor.v1",
  Diff: "io.containerd.differ.v1",
  Metadata: "io.containerd.metadata.v1",
  Content: "io.containerd.content.v1",
  GC: "io.containerd.gc.v1",
  Event: "io.containerd.event.v1",
  Lease: "io.containerd.lease.v1",
  Streaming: "io.containerd.streaming.v1",
  Transfer: "io.containerd.transfer.v1",
  Sandbox: "io.containerd.sandbox.controller.v1",
} as const;

/** Service plugin ids under io.containerd.service.v1, as containerd names them. */
export const ServiceId = {
  Content: "content-service",
  Snapshots: "snapshots-service",
  Images: "images-service",
  Containers: "containers-service",
  Tasks: "tasks-service",
  Namespaces: "namespaces-service",
  Leases: "leases-service",
  Diff: "diff-service",
  Introspection: "introspection-service",
} as const;
