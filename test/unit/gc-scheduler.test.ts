import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { parseDuration } from "../../src/base/duration.js";
import {
  type Collector,
  GcScheduler,
  type GcStats,
  SCHEDULER_DEFAULTS,
} from "../../src/core/gc/scheduler.js";

class CountingCollector implements Collector {
  runs = 0;
  fail = false;
  /** When each collection ran (Date.now()). */
  at: number[] = [];
  constructor(private readonly elapsedMs = 1) {}
  async collect(): Promise<GcStats> {
    this.runs++;
    this.at.push(Date.now());
    if (this.fail) throw new Error("disk on fire");
    return { elapsedMs: this.elapsedMs, removed: 0 };
  }
}

describe("gc scheduler", () => {
  it("parses Go durations", () => {
    assert.equal(parseDuration("0s"), 0);
    assert.equal(parseDuration("100ms"), 100);
    assert.equal(parseDuration("1h30m"), 5_400_000);
    assert.equal(parseDuration("1.5s"), 1500);
    assert.equal(parseDuration("-2s"), -2000);
    assert.throws(() => parseDuration("10"), /missing unit in duration "10"/);
    assert.throws(() => parseDuration("5 minutes"), /invalid duration/);
  });

  it("collects once at startup_delay, then only when there is work", async () => {
    const c = new CountingCollector();
    const s = new GcScheduler(c, { ...SCHEDULER_DEFAULTS, startup_delay: "20ms" });
    await sleep(120);
    assert.equal(c.runs, 1, "startup collection only");
    s.mutated(false);
    await sleep(120);
    assert.equal(c.runs, 1, "a plain mutation under mutation_threshold schedules nothing");
    s.mutated(true);
    await sleep(200);
    assert.equal(c.runs, 2, "a deletion is collected at the next interval");
    s.close();
  });

  it("an idle scheduler arms no timer, and collects a deletion at the check containerd would make", async () => {
    // a 10 ms collection under pause_threshold 0.02: a check every 490 ms after it
    const c = new CountingCollector(10);
    const s = new GcScheduler(c, { ...SCHEDULER_DEFAULTS, startup_delay: "20ms" });
    const deadline = Date.now() + 5000;
    const waitFor = async (what: string, done: () => boolean) => {
      while (!done()) {
        if (Date.now() > deadline) assert.fail(`gave up waiting: ${what}`);
        await sleep(5);
      }
    };
    await waitFor("parked", () => c.runs > 0 && !s.armed && Date.now() - c.at[0]! >= 490);
    assert.equal(c.runs, 1, "the check 490 ms after the startup collection found nothing to do");
    s.mutated(false);
    assert.equal(s.armed, false, "parked: a plain mutation under mutation_threshold arms nothing");
    s.mutated(true);
    assert.equal(s.armed, true, "a deletion arms the next check");
    await waitFor("the deletion collected", () => c.runs >= 2);
    const gap = c.at[1]! - c.at[0]!;
    // containerd's loop would have checked at +490 (nothing to do) and collected at +980
    assert.ok(gap >= 975, `collected ${gap} ms after the startup collection, not on the grid`);
    s.close();
  });

  it("scheduleAndWait runs a collection and resolves after it", async () => {
    const c = new CountingCollector();
    const s = new GcScheduler(c, { ...SCHEDULER_DEFAULTS, startup_delay: "0s" });
    const stats = await s.scheduleAndWait();
    assert.equal(c.runs, 1);
    assert.equal(stats.removed, 0);
    s.close();
  });

  it("mutation_threshold triggers a collection; deletion_threshold counts deletions", async () => {
    const c = new CountingCollector();
    const s = new GcScheduler(c, {
      ...SCHEDULER_DEFAULTS,
      startup_delay: "0s",
      mutation_threshold: 3,
      deletion_threshold: 1000,
    });
    s.mutated(false);
    s.mutated(false);
    await sleep(30);
    assert.equal(c.runs, 0);
    s.mutated(false);
    await sleep(30);
    assert.equal(c.runs, 1);
    s.close();
  });

  it("a failed collection rejects waiters with the cause and keeps the work pending", async () => {
    const c = new CountingCollector();
    c.fail = true;
    const s = new GcScheduler(c, { ...SCHEDULER_DEFAULTS, startup_delay: "0s" });
    await assert.rejects(s.scheduleAndWait(), /garbage collection failed: disk on fire/);
    c.fail = false;
    await sleep(1200);
    assert.ok(c.runs >= 2, "retried after the interval");
    s.close();
  });
});
