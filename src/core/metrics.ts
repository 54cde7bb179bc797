// What the daemon counts for its metrics, as plain numbers, and the hooks core code calls. The
// Prometheus exposition (prom-client) lives in ./metrics/prometheus.ts and is imported only when
// `[metrics] address` is set: nothing here loads it, and a hook nobody installed costs one
// property read at the call site.
import type { MetadataDB } from "./metadata/db.js";
import type { Task } from "./runtime/task.js";

/** Upper bounds of a histogram's buckets (seconds), Prometheus's defaults (grpc-go uses them). */
export const DEFAULT_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** A histogram kept as bare bucket counts (not cumulative), read at scrape time. */
export class BucketCounts {
  /** counts[i]: observations ≤ bounds[i] and > bounds[i-1]; the last slot is +Inf. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  constructor(readonly bounds: readonly number[] = DEFAULT_BUCKETS) {
    this.counts = new Float64Array(bounds.length + 1);
  }
  observe(v: number): void {
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > b[i]!) i++;
    this.counts[i]!++;
    this.sum += v;
    this.count++;
  }
}

/** Number of gRPC status codes (0..16). */
export const GRPC_CODES = 17;

/**
 * One gRPC method's counters (the shape src/grpc's transport bumps per call: its MethodCounters).
 * `seconds` is set while `[metrics] grpc_histogram` is on.
 */
export interface GrpcMethodCounters {
  started: number;
  msgReceived: number;
  msgSent: number;
  readonly handled: number[];
  seconds: BucketCounts | undefined;
}

export interface GrpcMethodStats {
  readonly service: string;
  readonly method: string;
  /** grpc-go's grpc_type label: unary, client_stream, server_stream, bidi_stream. */
  readonly type: string;
  readonly counters: GrpcMethodCounters;
  /** Kept while the histogram is off, so its counts stay monotonic when it is turned on again. */
  hist: BucketCounts | undefined;
}

const GRPC_TYPE: Record<string, string> = {
  unary: "unary",
  server_streaming: "server_stream",
  client_streaming: "client_stream",
  bidi_streaming: "bidi_stream",
};

/** What the scrape-time families read. Each part is optional: its plugin may be disabled. */
export interface MetricsSources {
  /** The metadata DB: content store and snapshot figures. */
  db?: MetadataDB;
  /** The task manager: running tasks (cgroup stats, states, shims). */
  tasks?: { list(): Task[] };
}

/** The daemon's counters: per gRPC method, registered once when the services are added. */
export class Metrics {
  readonly grpc: GrpcMethodStats[] = [];
  private histogram = false;
  /** Set by the daemon once its plugins are loaded. */
  sources: MetricsSources = {};

  /** The counters of one method (`/<service>/<method>`); the transport keeps the object. */
  grpcMethod(path: string, kind: string): GrpcMethodCounters {
    const [, service = "", method = ""] = path.split("/");
    const counters: GrpcMethodCounters = {
      started: 0,
      msgReceived: 0,
      msgSent: 0,
      handled: new Array<number>(GRPC_CODES).fill(0),
      seconds: undefined,
    };
    const s: GrpcMethodStats = { service, method, type: GRPC_TYPE[kind] ?? kind, counters, hist: undefined };
    if (this.histogram) counters.seconds = s.hist = new BucketCounts();
    this.grpc.push(s);
    return counters;
  }

  /** `[metrics] grpc_histogram`: time every call (a clock read per call) or not. */
  setGrpcHistogram(on: boolean): void {
    this.histogram = on;
    for (const s of this.grpc) {
      if (on) s.hist ??= new BucketCounts();
      s.counters.seconds = on ? s.hist : undefined;
    }
  }

  get grpcHistogram(): boolean {
    return this.histogram;
  }
}

/** Phases of a pull, timed separately. */
export type PullPhase = "resolve" | "metadata" | "layers" | "record";

/** Told about pulls (src/core/pull). Called per blob, layer and phase: never per byte. */
export interface PullObserver {
  /** A blob was fetched from a registry and committed to the content store. */
  fetched(bytes: number): void;
  /** A layer was unpacked into a snapshot. */
  layerUnpacked(): void;
  phase(phase: PullPhase, seconds: number): void;
  /** A pull ended: `err` is undefined on success. */
  finished(seconds: number, err?: unknown): void;
}

/** Told about garbage collections (src/core/gc/scheduler.ts). */
export interface GcObserver {
  collected(stats: { elapsedMs: number; removed: number }): void;
  failed(err: Error): void;
}

/** The installed observers; undefined while metrics are off. */
export const metricsHooks: { pull: PullObserver | undefined; gc: GcObserver | undefined } = {
  pull: undefined,
  gc: undefined,
};

/** Config reloads since start, counted whether or not metrics are served. */
export const configReloads = { ok: 0, failed: 0 };

/** Count one config reload (SIGHUP or the reload RPC): whether it was applied. */
export function recordConfigReload(ok: boolean): void {
  if (ok) configReloads.ok++;
  else configReloads.failed++;
}

/** Times the phases of one pull for metricsHooks.pull; a no-op while none is installed. */
export class PullTimer {
  private readonly obs = metricsHooks.pull;
  private readonly start = this.obs ? performance.now() : 0;
  private last = this.start;

  /** The phase that just ended. */
  mark(phase: PullPhase): void {
    if (!this.obs) return;
    const now = performance.now();
    this.obs.phase(phase, (now - this.last) / 1000);
    this.last = now;
  }

  finished(err?: unknown): void {
    this.obs?.finished((performance.now() - this.start) / 1000, err);
  }
}
