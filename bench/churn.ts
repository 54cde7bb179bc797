// Memory over time: berthd under container and pull churn for a long run (default 30 minutes),
// sampled every few minutes, to show that its costs stay flat. Not a side-by-side benchmark:
// it answers "does anything grow?", so only berthd runs.
//
// Workers loop `ctr run --rm` of a busybox container that exits at once; one more loop pulls a
// distinct small image daemon-side (`berth images pull`) and removes it with a synchronous GC.
// Every sample: RSS, V8 heap after a full collection (the debug socket's /debug/gc), open file
// descriptors, the SQLite WAL size, and the work done so far. The last line compares the end with
// the first sample taken after the warm-up.
//
//   node dist/bench/churn.js [--minutes 30] [--every 5] [--workers 2] [--images 20] [--tmpfs]
//                            [--heap-snapshots]
//
// --heap-snapshots has berthd write a V8 heap snapshot (/debug/heapsnapshot) at the first and at
// the last sample, and prints their paths: `node dist/scripts/heap-diff.js first last` then names
// what grew between them.
import { execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, statSync } from "node:fs";
import { get } from "node:http";
import path from "node:path";
import { parseArgs } from "node:util";
import { setChildSubreaper } from "../src/sys/reaper.js";
import { berth, ctr, ok } from "../test/helpers/ctr.js";
import { CRI_PLUGIN, killShimsOf, startBerthd } from "../test/helpers/daemons.js";
import { buildBusyboxImage, busyboxImageWith, pushImage } from "../test/helpers/images.js";
import { startRegistry } from "../test/helpers/registry.js";
import { makeTempDir, removeTempDir } from "../test/helpers/tmp.js";
import { fmt, fmtBytes, nowMs, procStatus, renderTable } from "./lib.js";

const { values: opt } = parseArgs({
  options: {
    minutes: { type: "string", default: "30" },
    every: { type: "string", default: "5" },
    workers: { type: "string", default: "2" },
    images: { type: "string", default: "20" },
    tmpfs: { type: "boolean", default: false },
    "heap-snapshots": { type: "boolean", default: false },
  },
});
const MINUTES = Number(opt.minutes);
const EVERY = Number(opt.every);
const WORKERS = Number(opt.workers);
const IMAGES = Number(opt.images);
const NS = "churn";
const log = (m: string) => process.stderr.write(`[bench] ${m}\n`);

interface Sample {
  minute: number;
  rss: number;
  heapAfterGc: number;
  fds: number;
  wal: number;
  containers: number;
  pulls: number;
  failures: number;
}

function debugGet<T>(sock: string, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    get({ socketPath: sock, path: what }, (res) => {
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => (res.statusCode === 200 ? resolve(JSON.parse(body)) : reject(new Error(body))));
    }).on("error", reject);
  });
}

const rssOf = (pid: number) => procStatus(pid, "VmRSS");
const sizeOr0 = (p: string) => {
  try {
    return statSync(p).size;
  } catch {
    return 0;
  }
};

async function main(): Promise<void> {
  setChildSubreaper(true);
  const tmp = await makeTempDir("bench-churn");
  let fast: string | undefined;
  if (opt.tmpfs) {
    fast = path.join(tmp, "fast");
    mkdirSync(fast);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=4g,mode=0711", "tmpfs", fast]);
  }
  const reg = await startRegistry();
  const debugSock = path.join(tmp, "debug.sock");
  const d = await startBerthd({
    config: `version = 2\n[debug]\naddress = ${JSON.stringify(debugSock)}\n`,
    disabledPlugins: [CRI_PLUGIN],
    ...(fast ? { root: path.join(fast, "root"), state: path.join(fast, "state") } : {}),
  });
  const samples: Sample[] = [];
  const work = { containers: 0, pulls: 0, failures: 0 };
  let stop = false;
  try {
    const ref = `${reg.host}/churn/busybox:1`;
    await pushImage(reg.url, "churn/busybox", "1", buildBusyboxImage());
    for (let i = 0; i < IMAGES; i++)
      await pushImage(reg.url, "churn/pulled", String(i), busyboxImageWith({ Env: [`CHURN=${i}`] }));
    ok(await ctr(d.address, ["-n", NS, "images", "pull", "--plain-http", ref]), "pull");

    const fail = (what: string, r: { code: number | null; stderr: string }) => {
      work.failures++;
      if (work.failures <= 5) log(`${what} failed (${r.code}): ${r.stderr.trim().split("\n")[0]}`);
    };
    const containerLoop = async (w: number) => {
      for (let n = 0; !stop; n++) {
        const id = `churn-${w}-${n}`;
        const r = await ctr(d.address, ["-n", NS, "run", "--rm", "--null-io", ref, id, "busybox", "true"], {
          timeoutMs: 60_000,
        });
        if (r.code === 0) work.containers++;
        else fail(`ctr run ${id}`, r);
      }
    };
    const pullLoop = async () => {
      for (let n = 0; !stop; n++) {
        const image = `${reg.host}/churn/pulled:${n % IMAGES}`;
        const p = await berth(d.address, ["-n", NS, "images", "pull", "--plain-http", image], {
          timeoutMs: 120_000,
        });
        if (p.code !== 0) {
          fail(`pull ${image}`, p);
          continue;
        }
        const rm = await ctr(d.address, ["-n", NS, "images", "rm", "--sync", image]);
        if (rm.code === 0) work.pulls++;
        else fail(`rm ${image}`, rm);
      }
    };
    const sample = async (minute: number) => {
      const gc = await debugGet<{ memstats: NodeJS.MemoryUsage }>(debugSock, "/debug/gc");
      samples.push({
        minute,
        rss: rssOf(d.pid),
        heapAfterGc: gc.memstats.heapUsed,
        fds: readdirSync(`/proc/${d.pid}/fd`).length,
        wal:
          sizeOr0(path.join(d.root, "io.containerd.metadata.v1.bolt", "meta.db-wal")) ||
          sizeOr0(path.join(d.root, "meta.db-wal")),
        ...work,
      });
      const s = samples[samples.length - 1]!;
      if (opt["heap-snapshots"] && (minute === 0 || minute + EVERY > MINUTES)) {
        const { file } = await debugGet<{ file: string }>(debugSock, "/debug/heapsnapshot");
        log(`minute ${minute}: heap snapshot ${file}`);
      }
      log(
        `minute ${minute}: rss ${fmtBytes(s.rss)}, heap ${fmtBytes(s.heapAfterGc)}, fds ${s.fds}, ${s.containers} containers, ${s.pulls} pulls`,
      );
    };

    const loops = [...Array.from({ length: WORKERS }, (_, w) => containerLoop(w)), pullLoop()];
    const t0 = nowMs();
    // warm-up: the first minute compiles code paths and fills caches; the baseline is after it
    await new Promise((r) => setTimeout(r, Math.min(60_000, (MINUTES * 60_000) / 4)));
    await sample(0);
    for (let m = EVERY; m <= MINUTES; m += EVERY) {
      await new Promise((r) => setTimeout(r, Math.max(0, t0 + m * 60_000 - nowMs())));
      await sample(m);
    }
    stop = true;
    await Promise.all(loops);
  } finally {
    stop = true;
    killShimsOf(d.address);
    await d.cleanup();
    await reg.cleanup();
    if (fast) execFileSync("umount", ["-l", fast]);
    await removeTempDir(tmp);
  }

  const rows = samples.map((s) => [
    String(s.minute),
    fmtBytes(s.rss),
    fmtBytes(s.heapAfterGc),
    String(s.fds),
    fmtBytes(s.wal),
    String(s.containers),
    String(s.pulls),
    String(s.failures),
  ]);
  console.log(
    `\nchurn: ${MINUTES} min, ${WORKERS} container workers + 1 pull loop (${IMAGES} images), roots ${fast ? "on tmpfs" : "on disk"}\n`,
  );
  console.log(
    renderTable(["minute", "RSS", "heap after GC", "fds", "WAL", "containers", "pulls", "failures"], rows),
  );
  if (samples.length >= 2) {
    const a = samples[0]!;
    const b = samples[samples.length - 1]!;
    const hours = (b.minute - a.minute) / 60 || 1;
    console.log(
      `\nfrom minute ${a.minute} to ${b.minute}: RSS ${fmt((b.rss - a.rss) / 1048576 / hours)} MiB/h, heap after GC ${fmt((b.heapAfterGc - a.heapAfterGc) / 1048576 / hours)} MiB/h, fds ${b.fds - a.fds}, WAL ${fmtBytes(b.wal)}`,
    );
  }
  if (work.failures > 0) process.exitCode = 1;
}

await main();
