// Layer apply benchmark: the same six gzip layers (~300 MB of tar, bench/layers.ts) applied by
//   tar -xzf         GNU tar + gzip, every layer into one directory (the raw limit)
//   berth plain      berth's applier, every layer into one directory (native-snapshotter style)
//   berth overlay    berth's applier, each layer into its own upper directory (overlayfs style)
//   berth differ     berth's walking differ, blobs read from berth's content store, onto
//                    overlayfs-snapshotter-shaped mounts (what berthd's Diff/Apply does)
//   containerd       the real containerd: Diff/Apply over gRPC onto overlayfs snapshots
//                    (Snapshots/Prepare + Commit around each layer), blobs ingested with ctr
//   berthd           the same calls against berthd, when it serves Diff and Snapshots
// Reps rotate the order of the contenders; medians and ratios are printed.
//
// Usage: node dist/bench/apply.js [--reps N] [--tmpfs] [--no-daemons] [--only name,name]

import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createReadStream, mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { isAlreadyExists } from "../src/base/errdefs.js";
import { nopLogger } from "../src/base/log.js";
import type { Mount } from "../src/base/mount.js";
import { PluginSet } from "../src/base/plugin.js";
import { PluginType } from "../src/base/plugin-types.js";
import { applyTar } from "../src/core/diff/apply.js";
import { openLayer } from "../src/core/diff/compression.js";
import type { WalkingDiffer } from "../src/core/diff/walking.js";
import { Diff } from "../src/gen/containerd/services/diff/v1/diff_pb.js";
import { Snapshots } from "../src/gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { Connection } from "../src/grpc/client.js";
import { contentPlugin } from "../src/plugins/content.js";
import { corePlugins, type Metadata } from "../src/plugins/core.js";
import { differPlugin } from "../src/plugins/diff.js";
import { ctr, ok } from "../test/helpers/ctr.js";
import {
  CRI_PLUGIN,
  type Daemon,
  GC_OFF_CONFIG,
  startBerthd,
  startContainerd,
} from "../test/helpers/daemons.js";
import { benchLayers, type LayerFile } from "./layers.js";
import { fmt, median, nowMs } from "./lib.js";

const args = process.argv.slice(2);
const flag = (n: string) => args.includes(n);
const opt = (n: string, d: string) => {
  const i = args.indexOf(n);
  return i >= 0 && args[i + 1] ? args[i + 1]! : d;
};
const REPS = Number(opt("--reps", "3"));
const TMPFS = flag("--tmpfs");
const DAEMONS = !flag("--no-daemons");
const ONLY = opt("--only", "");

const BASE = "/tmp/berth-bench-apply";
const NS = "bench";

function sh(cmd: string, a: string[]): void {
  const r = spawnSync(cmd, a, { stdio: ["ignore", "ignore", "pipe"] });
  if (r.status !== 0) throw new Error(`${cmd} ${a.join(" ")}: ${r.stderr?.toString() ?? r.status}`);
}

let seq = 0;
/**
 * A new directory for one run. Nothing is deleted until the end: on this ext4, creating files
 * right after a large delete is many times slower for a while, which would punish whoever runs next.
 */
function fresh(name: string): string {
  const d = join(BASE, `${name}-${seq++}`);
  mkdirSync(d, { recursive: true });
  return d;
}

/** On tmpfs, output is dropped after each run (memory); on disk it stays until the end (see fresh). */
function drop(dir: string): void {
  if (TMPFS) rmSync(dir, { recursive: true, force: true });
}

async function settle(): Promise<void> {
  // flush the previous run's dirty pages so that their writeback does not land on the next run
  sh("sync", []);
  await sleep(TMPFS ? 100 : 1000);
}

const layerStream = (l: LayerFile) =>
  openLayer(createReadStream(l.path, { highWaterMark: 1 << 20 }), "gzip", {
    expect: { digest: l.digest, size: l.size },
  });

interface Contender {
  name: string;
  /** Milliseconds for applying all layers, or undefined when it cannot run. */
  run(layers: LayerFile[]): Promise<number>;
}

const tarContender: Contender = {
  name: "tar -xzf",
  async run(layers) {
    const dir = fresh("tar");
    await settle();
    const t0 = nowMs();
    for (const l of layers) sh("tar", ["-xzf", l.path, "-C", dir]);
    const ms = nowMs() - t0;
    drop(dir);
    return ms;
  },
};

const plainContender: Contender = {
  name: "berth plain",
  async run(layers) {
    const dir = fresh("plain");
    await settle();
    const t0 = nowMs();
    for (const l of layers) {
      const r = await applyTar(dir, layerStream(l), { mode: "plain" });
      if (r.digest !== l.diffId) throw new Error(`diff id mismatch for ${l.path}`);
    }
    const ms = nowMs() - t0;
    drop(dir);
    return ms;
  },
};

const overlayContender: Contender = {
  name: "berth overlay",
  async run(layers) {
    const base = fresh("overlay");
    const dirs = layers.map((_, i) => join(base, String(i)));
    for (const d of dirs) mkdirSync(d);
    await settle();
    const t0 = nowMs();
    for (let i = 0; i < layers.length; i++) {
      const l = layers[i]!;
      const r = await applyTar(dirs[i]!, layerStream(l), {
        mode: "overlay",
        parents: dirs.slice(0, i).reverse(),
      });
      if (r.digest !== l.diffId) throw new Error(`diff id mismatch for ${l.path}`);
    }
    const ms = nowMs() - t0;
    drop(base);
    return ms;
  },
};

/** Mounts like the overlayfs snapshotter gives for an active snapshot over `parents` (top first). */
function snapshotMounts(upper: string, work: string, parents: string[]): Mount[] {
  if (parents.length === 0) return [{ type: "bind", source: upper, options: ["rbind", "rw"] }];
  return [
    {
      type: "overlay",
      source: "overlay",
      options: [`workdir=${work}`, `upperdir=${upper}`, `lowerdir=${parents.join(":")}`],
    },
  ];
}

async function differContender(): Promise<Contender & { close(): Promise<void> }> {
  const root = fresh("berth-root");
  const plugins = new PluginSet();
  await plugins.init([contentPlugin, ...corePlugins, differPlugin], {
    daemon: {
      root,
      state: fresh("berth-state"),
      address: "",
      ttrpcAddress: "",
      version: "bench",
      revision: "",
    },
    disabled: [],
    required: [],
    configFor: (p) => p.defaults?.() ?? {},
    log: nopLogger,
  });
  const md = plugins.instance<Metadata>(PluginType.Metadata, "bolt");
  const differ = plugins.instance<WalkingDiffer>(PluginType.Diff, "walking");
  return {
    name: "berth differ",
    async run(layers) {
      for (const l of layers) {
        try {
          const w = await md.content.writer(NS, `ingest-${l.digest}`, { total: l.size, expected: l.digest });
          for await (const c of createReadStream(l.path, { highWaterMark: 1 << 20 }))
            await w.write(c as Buffer);
          await w.commit(l.size, l.digest);
        } catch (err) {
          if (!isAlreadyExists(err)) throw err;
        }
      }
      const base = fresh("snapshots");
      await settle();
      const t0 = nowMs();
      const parents: string[] = [];
      for (let i = 0; i < layers.length; i++) {
        const l = layers[i]!;
        const upper = join(base, `${i}/fs`);
        const work = join(base, `${i}/work`);
        mkdirSync(upper, { recursive: true });
        mkdirSync(work);
        const r = await differ.apply(
          NS,
          { mediaType: l.mediaType, digest: l.digest, size: l.size },
          snapshotMounts(upper, work, parents),
        );
        if (r.digest !== l.diffId) throw new Error(`diff id mismatch for ${l.path}`);
        parents.unshift(upper);
      }
      const ms = nowMs() - t0;
      drop(base);
      return ms;
    },
    close: () => plugins.close(),
  };
}

/** A daemon driven over gRPC: layers ingested with ctr, applied with Diff/Apply onto overlayfs snapshots. */
async function daemonContender(name: string, d: Daemon): Promise<Contender | undefined> {
  const conn = new Connection(d.address);
  const diff = conn.client(Diff);
  const snaps = conn.client(Snapshots);
  try {
    await snaps.prepare(
      { snapshotter: "overlayfs", key: `probe-${randomBytes(4).toString("hex")}` },
      { namespace: NS },
    );
    // an unsupported media type is answered before any mount is touched
    const probe = await diff
      .diff({ left: [], right: [], mediaType: "application/x-berth-probe" }, { namespace: NS })
      .then(
        () => undefined,
        (err: Error) => err,
      );
    if (!probe || !/unsupported diff media type/.test(probe.message))
      throw probe ?? new Error("diff probe succeeded");
  } catch (err) {
    console.log(`${name}: skipped (${(err as Error).message.split("\n")[0]})`);
    conn.close();
    return undefined;
  }
  return {
    name,
    async run(layers) {
      for (const l of layers) {
        const r = await ctr(
          d.address,
          [
            "content",
            "ingest",
            "--expected-size",
            String(l.size),
            "--expected-digest",
            l.digest,
            `ingest-${l.digest}`,
          ],
          {
            namespace: NS,
            input: { file: l.path },
          },
        );
        if (r.code !== 0 && !/already exists/.test(r.stderr)) ok(r, "ctr content ingest");
      }
      await settle();
      const run = randomBytes(4).toString("hex");
      const t0 = nowMs();
      let parent = "";
      for (let i = 0; i < layers.length; i++) {
        const l = layers[i]!;
        const key = `${run}-${i}-active`;
        const prep = await snaps.prepare({ snapshotter: "overlayfs", key, parent }, { namespace: NS });
        const res = await diff.apply(
          { diff: { mediaType: l.mediaType, digest: l.digest, size: BigInt(l.size) }, mounts: prep.mounts },
          { namespace: NS, timeoutMs: 600_000 },
        );
        if (res.applied?.digest !== l.diffId)
          throw new Error(`${name}: diff id mismatch for ${l.path}: ${res.applied?.digest}`);
        const committed = `${run}-${i}`;
        await snaps.commit({ snapshotter: "overlayfs", name: committed, key }, { namespace: NS });
        parent = committed;
      }
      const ms = nowMs() - t0;
      if (TMPFS) {
        // children first; on disk they stay (see fresh)
        for (let i = layers.length - 1; i >= 0; i--)
          await snaps.remove({ snapshotter: "overlayfs", key: `${run}-${i}` }, { namespace: NS });
      }
      return ms;
    },
  };
}

async function main(): Promise<void> {
  const t0 = nowMs();
  const layers = await benchLayers();
  const tarBytes = layers.reduce((a, l) => a + l.tarSize, 0);
  const gzBytes = layers.reduce((a, l) => a + l.size, 0);
  const entries = layers.reduce((a, l) => a + l.entries, 0);
  console.log(
    `layers: ${layers.length}, ${(tarBytes / 1e6).toFixed(0)} MB tar, ${(gzBytes / 1e6).toFixed(0)} MB gzip, ${entries} entries (ready in ${fmt((nowMs() - t0) / 1000)} s)`,
  );
  mkdirSync(BASE, { recursive: true });
  if (TMPFS) sh("mount", ["-t", "tmpfs", "-o", "size=12g", "tmpfs", BASE]);
  const daemons: Daemon[] = [];
  const closers: (() => Promise<void>)[] = [];
  try {
    const all: Contender[] = [tarContender, plainContender, overlayContender];
    const dc = await differContender();
    closers.push(dc.close);
    all.push(dc);
    if (DAEMONS) {
      const c = await startContainerd({
        root: fresh("containerd-root"),
        config: GC_OFF_CONFIG,
        disabledPlugins: [CRI_PLUGIN],
      });
      daemons.push(c);
      const cc = await daemonContender("containerd", c);
      if (cc) all.push(cc);
      try {
        const b = await startBerthd({ root: fresh("berthd-root"), disabledPlugins: [CRI_PLUGIN] });
        daemons.push(b);
        const bc = await daemonContender("berthd", b);
        if (bc) all.push(bc);
      } catch (err) {
        console.log(`berthd: skipped (${(err as Error).message.split("\n")[0]})`);
      }
    }
    const chosen = ONLY ? all.filter((c) => ONLY.split(",").some((o) => c.name.includes(o))) : all;
    const times = new Map<string, number[]>(chosen.map((c) => [c.name, []]));
    for (let rep = 0; rep < REPS; rep++) {
      const order = chosen.map((_, i) => chosen[(i + rep) % chosen.length]!);
      for (const c of order) {
        const ms = await c.run(layers);
        times.get(c.name)!.push(ms);
        console.log(`rep ${rep + 1} ${c.name}: ${fmt(ms)} ms`);
      }
    }
    const tarMs = median(times.get(tarContender.name) ?? []);
    const ctdMs = median(times.get("containerd") ?? []);
    console.log(`\n${TMPFS ? "tmpfs" : "disk (ext4)"}; medians of ${REPS}:`);
    console.log(
      `${"".padEnd(16)} ${"ms".padStart(8)} ${"MB/s".padStart(6)}  ${"/tar".padStart(6)} ${"/containerd".padStart(11)}`,
    );
    for (const [name, ts] of times) {
      const m = median(ts);
      const r = (x: number) => (Number.isFinite(x) ? (m / x).toFixed(2) : "—");
      console.log(
        `${name.padEnd(16)} ${fmt(m).padStart(8)} ${(tarBytes / 1e6 / (m / 1000)).toFixed(0).padStart(6)}  ${r(tarMs).padStart(6)} ${r(ctdMs).padStart(11)}`,
      );
    }
  } finally {
    for (const c of closers) await c().catch(() => {});
    for (const d of daemons) await d.cleanup().catch((e) => console.error("cleanup:", e));
    if (TMPFS) sh("umount", ["-l", BASE]);
    rmSync(BASE, { recursive: true, force: true });
  }
}

await main();
