// When to collect: containerd's gc.v1.scheduler semantics. Deletions ("dirty" mutations) and
// plain mutations are counted; a collection is scheduled by thresholds or an explicit trigger
// (sync deletes), and the pause between collections keeps GC under pause_threshold of time.
import { parseDuration } from "../../base/duration.js";
import { metricsHooks } from "../metrics.js";

export interface GcStats {
  /** Milliseconds the collection took. */
  elapsedMs: number;
  removed: number;
}

export interface Collector {
  collect(): Promise<GcStats>;
}

export interface SchedulerConfig {
  pause_threshold: number;
  deletion_threshold: number;
  mutation_threshold: number;
  schedule_delay: string;
  startup_delay: string;
}

export const SCHEDULER_DEFAULTS: SchedulerConfig = {
  pause_threshold: 0.02,
  deletion_threshold: 0,
  mutation_threshold: 100,
  schedule_delay: "0s",
  startup_delay: "100ms",
};

export class GcScheduler {
  // not readonly: a config reload changes them (reconfigure)
  private pauseThreshold: number;
  private deletionThreshold: number;
  private mutationThreshold: number;
  private scheduleDelay: number;
  private cfg: SchedulerConfig;
  private timer: NodeJS.Timeout | undefined;
  /** When the next check is due; while parked, the last check's time (the grid's origin). */
  private nextAt: number | undefined;
  /**
   * Parked: a check found nothing to do and no timer runs. containerd's loop wakes at every
   * interval to find that out (~every 170 ms after a 3.5 ms collection); each wake-up of an idle
   * Node process costs ~0.2 ms of CPU on a small VM (1.4 ms per second in all). The next mutation
   * that makes a check do something arms the timer for the check containerd's loop would have
   * made next, on the same grid of intervals, so collections happen at the same times.
   */
  private parked = false;
  private lastAt: number | undefined;
  private intervalMs = 1000;
  private gcTimeMs = 0;
  private collections = 0;
  private triggered = false;
  private deletions = 0;
  private mutations = 0;
  private running: Promise<void> | undefined;
  private waiters: { resolve: (s: GcStats) => void; reject: (e: Error) => void }[] = [];
  private closed = false;
  /** Last error, for logs and tests. */
  lastError: Error | undefined;
  onCollected: ((s: GcStats) => void) | undefined;
  onError: ((e: Error) => void) | undefined;

  constructor(
    private readonly collector: Collector,
    cfg: SchedulerConfig,
  ) {
    this.pauseThreshold = Math.min(Math.max(cfg.pause_threshold, 0), 0.5);
    this.deletionThreshold = cfg.deletion_threshold;
    this.mutationThreshold = Math.max(cfg.mutation_threshold, 0);
    this.scheduleDelay = Math.max(parseDuration(cfg.schedule_delay), 0);
    this.cfg = { ...cfg };
    const startup = Math.max(parseDuration(cfg.startup_delay), 0);
    if (startup > 0) this.schedule(startup);
  }

  /**
   * New thresholds from a config reload (startup_delay is past by then). Counts so far are kept
   * and weighed against the new thresholds. Returns the previous config, to undo with.
   */
  reconfigure(cfg: SchedulerConfig): SchedulerConfig {
    const prev = this.cfg;
    this.scheduleDelay = Math.max(parseDuration(cfg.schedule_delay), 0);
    this.pauseThreshold = Math.min(Math.max(cfg.pause_threshold, 0), 0.5);
    this.deletionThreshold = cfg.deletion_threshold;
    this.mutationThreshold = Math.max(cfg.mutation_threshold, 0);
    this.cfg = { ...cfg };
    if (!this.closed) this.maybeSchedule();
    return prev;
  }

  /** Whether a check is armed; false while parked (and during a collection). */
  get armed(): boolean {
    return this.timer !== undefined;
  }

  /** The metadata layer reports each committed mutation; `dirty` means something was deleted. */
  mutated(dirty: boolean): void {
    if (this.closed) return;
    if (dirty) this.deletions++;
    this.mutations++;
    this.maybeSchedule();
  }

  /** Schedule a collection now and wait for it (sync deletes). */
  scheduleAndWait(): Promise<GcStats> {
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.triggered = true;
      this.timer?.ref();
      this.maybeSchedule();
    });
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    for (const w of this.waiters.splice(0)) w.reject(new Error("gc scheduler stopped"));
  }

  private maybeSchedule(): void {
    const due =
      this.triggered ||
      (this.deletionThreshold > 0 && this.deletions >= this.deletionThreshold) ||
      (this.nextAt === undefined &&
        ((this.deletionThreshold === 0 && this.deletions > 0) ||
          (this.mutationThreshold > 0 && this.mutations >= this.mutationThreshold)));
    const now = Date.now();
    if (due) {
      // parked, no timer runs: arm one for whichever comes first
      if (this.parked) this.schedule(Math.min(this.scheduleDelay, this.nextCheckAfter(now) - now));
      else if (this.nextAt === undefined || this.nextAt > now + this.scheduleDelay)
        this.schedule(this.scheduleDelay);
      return;
    }
    if (this.parked && this.hasWork()) this.schedule(this.nextCheckAfter(now) - now);
  }

  /** Whether a periodic check would collect, once a first collection has run. */
  private hasWork(): boolean {
    return (
      this.triggered ||
      this.deletions > 0 ||
      (this.mutationThreshold > 0 && this.mutations >= this.mutationThreshold)
    );
  }

  /** The first check at or after `now` on the parked grid: the parking check's time + k × interval, k ≥ 1. */
  private nextCheckAfter(now: number): number {
    const origin = this.nextAt ?? now;
    const k = Math.max(1, Math.ceil((now - origin) / this.intervalMs));
    return origin + k * this.intervalMs;
  }

  private schedule(ms: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.parked = false;
    this.nextAt = Date.now() + ms;
    this.timer = setTimeout(() => this.fire(), ms);
    // Background collections must not keep the process alive; a caller waiting on one must.
    if (this.waiters.length === 0) this.timer.unref();
  }

  private fire(): void {
    this.timer = undefined;
    if (this.closed) return;
    // A periodic check with nothing to do parks: the grid goes on from this check's time.
    if (this.lastAt !== undefined && !this.hasWork()) {
      this.parked = true;
      this.nextAt = Date.now();
      return;
    }
    if (this.running) {
      // a collection is in flight: look again right after it
      this.running.then(() => this.fire());
      return;
    }
    this.running = this.run().finally(() => {
      this.running = undefined;
    });
  }

  private async run(): Promise<void> {
    const waiters = this.waiters.splice(0);
    this.triggered = false;
    const deletions = this.deletions;
    const mutations = this.mutations;
    this.deletions = 0;
    this.mutations = 0;
    try {
      const stats = await this.collector.collect();
      this.gcTimeMs += stats.elapsedMs;
      this.collections++;
      if (this.pauseThreshold > 0) {
        const avg = this.gcTimeMs / this.collections;
        this.intervalMs = Math.max(avg / this.pauseThreshold - avg, 1);
      }
      this.lastAt = Date.now();
      this.lastError = undefined;
      this.onCollected?.(stats);
      metricsHooks.gc?.collected(stats);
      for (const w of waiters) w.resolve(stats);
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err));
      this.lastError = e;
      this.onError?.(e);
      metricsHooks.gc?.failed(e);
      // keep what was pending so the next run still happens
      this.deletions += deletions;
      this.mutations += mutations;
      if (waiters.length > 0) this.triggered = true;
      this.lastAt = Date.now();
      for (const w of waiters) w.reject(new Error(`garbage collection failed: ${e.message}`));
    }
    if (!this.closed) this.schedule(this.intervalMs);
  }
}
