// io.containerd.gc.v1.scheduler: containerd's config keys, the metadata collector, and the
// backends' sweeps (content blobs, snapshotter dirs).

import { parseDuration } from "../base/duration.js";
import type { Plugin } from "../base/plugin.js";
import { PluginType, ServiceId } from "../base/plugin-types.js";
import { MetadataCollector } from "../core/gc/collector.js";
import { GcScheduler, SCHEDULER_DEFAULTS, type SchedulerConfig } from "../core/gc/scheduler.js";
import type { LeaseStore } from "../core/leases/store.js";
import type { SnapshotService } from "../core/snapshots/metadata.js";
import type { Metadata } from "./core.js";

export const gcPlugin: Plugin<SchedulerConfig> = {
  type: PluginType.GC,
  id: "scheduler",
  requires: [PluginType.Metadata, PluginType.Lease, PluginType.Service],
  defaults: () => ({ ...SCHEDULER_DEFAULTS }),
  init(ic) {
    const cfg = ic.config;
    // Bad durations are config errors: say which key.
    for (const key of ["schedule_delay", "startup_delay"] as const) {
      try {
        parseDuration(cfg[key]);
      } catch (err) {
        throw new Error(`${key}: ${(err as Error).message}`);
      }
    }
    const md = ic.get<Metadata>(PluginType.Metadata);
    const collector = new MetadataCollector(md.db);
    collector.addSweeper({ kind: "content", sweep: (only) => md.content.sweep(only) });
    const snapshots = ic.getAll<SnapshotService>(PluginType.Service).get(ServiceId.Snapshots);
    if (snapshots)
      for (const sn of snapshots.all())
        collector.addSweeper({ kind: `snapshots/${sn.name}`, sweep: () => sn.collect() });
    const scheduler = new GcScheduler(collector, cfg);
    scheduler.onCollected = (s) =>
      ic.log.debug("garbage collected", { d: `${s.elapsedMs.toFixed(1)}ms`, removed: s.removed });
    scheduler.onError = (e) => ic.log.error("garbage collection failed", { error: e.message });
    md.db.onMutation((dirty) => scheduler.mutated(dirty));
    const leases = ic.get<LeaseStore>(PluginType.Lease);
    leases.collect = async () => {
      await scheduler.scheduleAndWait();
    };
    ic.meta.exports = {
      PauseThreshold: String(cfg.pause_threshold),
      DeletionThreshold: String(cfg.deletion_threshold),
      MutationThreshold: String(cfg.mutation_threshold),
      ScheduleDelay: cfg.schedule_delay,
    };
    ic.onClose(() => scheduler.close());
    return scheduler;
  },
};
