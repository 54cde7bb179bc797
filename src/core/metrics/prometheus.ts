// The Prometheus exposition of the daemon's metrics, built on prom-client. This module is imported
// (dynamically, with prom-client) only when `[metrics] address` is set: a daemon without metrics
// never loads either.
//
// Families:
// - grpc-go's server families (grpc_server_started_total, grpc_server_handled_total,
//   grpc_server_msg_received_total, grpc_server_msg_sent_total, and grpc_server_handling_seconds
//   while `grpc_histogram` is on), from the per-method counters the transport bumps;
// - containerd's cgroups monitor families (container_*), from every task's Stats at scrape time;
// - berth's own (berth_*): pulls, content store, snapshots, GC, shims, tasks, config reloads;
// - Node's process metrics (prom-client's default collectors: event loop lag, heap, GC pauses).
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type * as PromClient from "prom-client";
import { onDemand } from "../../base/builtin.js";
import { BerthError, GRPC_CODE_NAMES } from "../../base/errdefs.js";
import {
  type BucketCounts,
  configReloads,
  type GcObserver,
  type Metrics,
  type MetricsSources,
  metricsHooks,
  type PullObserver,
} from "../metrics.js";
import { type CgroupSample, cgroupSamples } from "./cgroup-stats.js";

type Prom = typeof PromClient;
type Labels = Record<string, string | number>;
interface Value {
  value: number;
  labels?: Labels;
  metricName?: string;
}
type MetricType = "counter" | "gauge" | "histogram";

/** How long one task's Stats/State may take before a scrape goes on without it. */
const TASK_TIMEOUT_MS = 2000;

const PULL_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const GC_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const TASK_STATES = ["created", "running", "stopped", "paused", "pausing", "unknown"];

/**
 * A family whose samples are computed when scraped. prom-client's registry only calls get() (and
 * reads name/help/type), so this stands in for its own metric classes without their per-label
 * bookkeeping.
 */
class ScrapeFamily {
  readonly aggregator = "sum";
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: MetricType,
    private readonly values: () => Value[],
  ) {}
  get(): { name: string; help: string; type: MetricType; values: Value[]; aggregator: string } {
    return { name: this.name, help: this.help, type: this.type, values: this.values(), aggregator: "sum" };
  }
  reset(): void {}
}

/** Histogram samples (`_bucket` with cumulative counts and `le`, `_sum`, `_count`) of bare counts. */
function histogramValues(name: string, h: BucketCounts, labels: Labels, out: Value[]): void {
  let acc = 0;
  h.bounds.forEach((le, i) => {
    acc += h.counts[i]!;
    out.push({ metricName: `${name}_bucket`, labels: { ...labels, le }, value: acc });
  });
  out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: "+Inf" }, value: h.count });
  out.push({ metricName: `${name}_sum`, labels, value: h.sum });
  out.push({ metricName: `${name}_count`, labels, value: h.count });
}

/** A pull failure's reason label: its error kind (`not_found`, `unauthenticated`, …). */
export function failureReason(err: unknown): string {
  if (err instanceof BerthError) return err.kind.replace(/ /g, "_");
  if (err instanceof Error && err.name === "AbortError") return "canceled";
  return "unknown";
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("timed out")), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Loads prom-client (kept out of the bundle: only a daemon with [metrics] needs it). */
function loadProm(): Prom {
  return onDemand("prom-client") as Prom;
}

export class PrometheusExporter {
  readonly contentType: string;
  private readonly registry: PromClient.Registry;
  private readonly pull: PullObserver;
  private readonly gc: GcObserver;
  /** Filled just before each exposition (one Stats/State round over the tasks). */
  private containerSamples = new Map<string, { help: string; values: Value[] }>();
  private taskStates = new Map<string, number>();
  private shims = 0;
  private grpcHistogram!: ScrapeFamily;
  /** container_* families registered so far (they appear with the first task reporting them). */
  private readonly containerFamilies = new Set<string>();

  static async create(metrics: Metrics, sources: MetricsSources): Promise<PrometheusExporter> {
    return new PrometheusExporter(loadProm(), metrics, sources);
  }

  private constructor(
    prom: Prom,
    private readonly metrics: Metrics,
    private readonly sources: MetricsSources,
  ) {
    const registry = new prom.Registry();
    this.registry = registry;
    this.contentType = registry.contentType;
    prom.collectDefaultMetrics({ register: registry });
    this.registerGrpc();

    const registers = [registry];
    const pulls = new prom.Counter({
      name: "berth_pulls_total",
      help: "Image pulls that completed",
      registers,
    });
    const failures = new prom.Counter({
      name: "berth_pull_failures_total",
      help: "Image pulls that failed, by reason (the error kind)",
      labelNames: ["reason"],
      registers,
    });
    const fetched = new prom.Counter({
      name: "berth_pull_fetched_bytes_total",
      help: "Bytes of blobs pulled from registries into the content store",
      registers,
    });
    const unpacked = new prom.Counter({
      name: "berth_pull_layers_unpacked_total",
      help: "Layers unpacked into snapshots by pulls",
      registers,
    });
    const phases = new prom.Histogram({
      name: "berth_pull_phase_seconds",
      help: "Time spent per pull phase: resolve, metadata (index, manifests, configs), layers (download and unpack), record",
      labelNames: ["phase"],
      buckets: PULL_BUCKETS,
      registers,
    });
    const duration = new prom.Histogram({
      name: "berth_pull_duration_seconds",
      help: "Duration of image pulls, successful or not",
      buckets: PULL_BUCKETS,
      registers,
    });
    this.pull = {
      fetched: (bytes) => fetched.inc(bytes),
      layerUnpacked: () => unpacked.inc(),
      phase: (phase, seconds) => phases.observe({ phase }, seconds),
      finished: (seconds, err) => {
        duration.observe(seconds);
        if (err === undefined) pulls.inc();
        else failures.inc({ reason: failureReason(err) });
      },
    };

    const gcRuns = new prom.Counter({
      name: "berth_gc_runs_total",
      help: "Garbage collections run, by result",
      labelNames: ["result"],
      registers,
    });
    const gcRemoved = new prom.Counter({
      name: "berth_gc_objects_removed_total",
      help: "Objects (records, blobs, snapshots) removed by garbage collection",
      registers,
    });
    const gcDuration = new prom.Histogram({
      name: "berth_gc_duration_seconds",
      help: "Duration of successful garbage collections",
      buckets: GC_BUCKETS,
      registers,
    });
    gcRuns.inc({ result: "ok" }, 0);
    gcRuns.inc({ result: "failed" }, 0);
    this.gc = {
      collected: (s) => {
        gcRuns.inc({ result: "ok" });
        gcRemoved.inc(s.removed);
        gcDuration.observe(s.elapsedMs / 1000);
      },
      failed: () => gcRuns.inc({ result: "failed" }),
    };

    this.registerScrapeFamilies();
  }

  private register(f: ScrapeFamily): void {
    this.registry.registerMetric(f as unknown as PromClient.Metric);
  }

  private registerGrpc(): void {
    const g = this.metrics.grpc;
    const labels = (s: (typeof g)[number]) => ({
      grpc_method: s.method,
      grpc_service: s.service,
      grpc_type: s.type,
    });
    const perMethod = (pick: (s: (typeof g)[number]) => number) => () =>
      g.map((s) => ({ labels: labels(s), value: pick(s) }));
    this.register(
      new ScrapeFamily(
        "grpc_server_started_total",
        "RPCs the server began handling.",
        "counter",
        perMethod((s) => s.counters.started),
      ),
    );
    this.register(
      new ScrapeFamily(
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        "counter",
        () => {
          const out: Value[] = [];
          for (const s of g)
            s.counters.handled.forEach((n, code) => {
              if (n > 0)
                out.push({
                  labels: { grpc_code: GRPC_CODE_NAMES[code] ?? String(code), ...labels(s) },
                  value: n,
                });
            });
          return out;
        },
      ),
    );
    this.register(
      new ScrapeFamily(
        "grpc_server_msg_received_total",
        "Request messages the server received.",
        "counter",
        perMethod((s) => s.counters.msgReceived),
      ),
    );
    this.register(
      new ScrapeFamily(
        "grpc_server_msg_sent_total",
        "Response messages the server sent.",
        "counter",
        perMethod((s) => s.counters.msgSent),
      ),
    );
    this.grpcHistogram = new ScrapeFamily(
      "grpc_server_handling_seconds",
      "Seconds from the start of an RPC to its status, as seen by the server.",
      "histogram",
      () => {
        const out: Value[] = [];
        // methods never called are left out: 14 lines each would dwarf the rest of a scrape
        for (const s of g)
          if (s.hist?.count) histogramValues("grpc_server_handling_seconds", s.hist, labels(s), out);
        return out;
      },
    );
  }

  private registerScrapeFamilies(): void {
    const db = this.sources.db;
    if (db) {
      const content = db.sql.prepare(
        "SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM (SELECT digest, MAX(size) AS size FROM content GROUP BY digest)",
      );
      const snaps = db.sql.prepare(
        "SELECT snapshotter, kind, COUNT(*) AS n FROM snapshots GROUP BY snapshotter, kind ORDER BY snapshotter, kind",
      );
      this.register(
        new ScrapeFamily(
          "berth_content_store_size_bytes",
          "Bytes of the blobs in the content store (each digest once)",
          "gauge",
          () => [{ value: (content.get() as { bytes: number }).bytes }],
        ),
      );
      this.register(
        new ScrapeFamily(
          "berth_content_blobs",
          "Blobs in the content store (each digest once)",
          "gauge",
          () => [{ value: (content.get() as { n: number }).n }],
        ),
      );
      this.register(
        new ScrapeFamily("berth_snapshots", "Snapshots, by snapshotter and kind", "gauge", () =>
          (snaps.all() as { snapshotter: string; kind: string; n: number }[]).map((r) => ({
            labels: { snapshotter: r.snapshotter, kind: r.kind },
            value: r.n,
          })),
        ),
      );
    }
    if (this.sources.tasks) {
      this.register(
        new ScrapeFamily("berth_shims_running", "Shim processes serving this daemon's tasks", "gauge", () => [
          { value: this.shims },
        ]),
      );
      this.register(
        new ScrapeFamily("berth_tasks", "Tasks, by state", "gauge", () =>
          TASK_STATES.map((state) => ({ labels: { state }, value: this.taskStates.get(state) ?? 0 })),
        ),
      );
    }
    this.register(
      new ScrapeFamily("berth_config_reloads_total", "Configuration reloads, by result", "counter", () => [
        { labels: { result: "ok" }, value: configReloads.ok },
        { labels: { result: "failed" }, value: configReloads.failed },
      ]),
    );
  }

  /** Read every task's stats and state (concurrently, each bounded by a timeout). */
  private async collectTasks(): Promise<void> {
    const tasks = this.sources.tasks?.list() ?? [];
    const samples = new Map<string, { help: string; values: Value[] }>();
    const states = new Map<string, number>();
    const shims = new Set<string>();
    await Promise.all(
      tasks.map(async (t) => {
        const [state, stats, address] = await Promise.allSettled([
          t.state({ timeoutMs: TASK_TIMEOUT_MS }),
          withTimeout(t.metrics(), TASK_TIMEOUT_MS),
          readFile(join(t.bundle, "address"), "utf8"),
        ]);
        const st = state.status === "fulfilled" ? state.value.status : "unknown";
        states.set(st, (states.get(st) ?? 0) + 1);
        if (address.status === "fulfilled") shims.add(address.value.trim());
        if (stats.status !== "fulfilled" || !stats.value) return;
        let list: CgroupSample[];
        try {
          list = cgroupSamples(stats.value.typeUrl, stats.value.value);
        } catch {
          return; // undecodable stats: this task is left out of the container families
        }
        for (const s of list) {
          let fam = samples.get(s.name);
          if (!fam) {
            fam = { help: s.help, values: [] };
            samples.set(s.name, fam);
          }
          fam.values.push({
            labels: { container_id: t.id, namespace: t.namespace, ...s.labels },
            value: s.value,
          });
        }
      }),
    );
    this.containerSamples = samples;
    this.taskStates = states;
    this.shims = shims.size;
  }

  /** The exposition text; scrape-time sources are read now. */
  async render(): Promise<string> {
    // the handling histogram is exported only while grpc_histogram is on, as containerd does
    const registered = this.registry.getSingleMetric(this.grpcHistogram.name) !== undefined;
    if (this.metrics.grpcHistogram && !registered) this.register(this.grpcHistogram);
    else if (!this.metrics.grpcHistogram && registered)
      this.registry.removeSingleMetric(this.grpcHistogram.name);
    if (this.sources.tasks) {
      await this.collectTasks();
      for (const [name, fam] of this.containerSamples) {
        if (this.containerFamilies.has(name)) continue;
        this.containerFamilies.add(name);
        this.register(
          new ScrapeFamily(name, fam.help, "gauge", () => this.containerSamples.get(name)?.values ?? []),
        );
      }
    }
    return this.registry.metrics();
  }

  /** Route the core hooks (pulls, GC) here. */
  install(): void {
    metricsHooks.pull = this.pull;
    metricsHooks.gc = this.gc;
  }

  uninstall(): void {
    if (metricsHooks.pull === this.pull) metricsHooks.pull = undefined;
    if (metricsHooks.gc === this.gc) metricsHooks.gc = undefined;
  }
}
