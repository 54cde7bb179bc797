// Cold pull of a ~300 MB, 6-layer gzip image from a local docker-registry:
//   (a) `berth images pull` on berthd (daemon-side, Transfer service) vs `ctr images pull` on containerd
//   (b) `ctr images pull` (client-side in ctr 1.6) on berthd vs on containerd
//   (c) raw limit: fetch every blob and `tar -xz` it (layers in parallel, own dirs)
// Every measurement starts a fresh daemon (cold: empty content store and snapshotter); medians of
// REPS (default 3), daemons alternated per rep. Usage: node dist/bench/pull.js [reps] [--tmpfs]
// [--settle MS]. --tmpfs puts the daemons' roots (and the raw extraction) on a tmpfs mounted for the
// run and unmounted after, taking the disk out of the comparison; --settle waits between runs
// (default 2000 ms with --tmpfs, else 0) after a sync, so one run's writeback does not tax the next.
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { berth, ctr, ok } from "../test/helpers/ctr.js";
import { type Daemon, startBerthd, startContainerd } from "../test/helpers/daemons.js";
import { pushBlob, pushManifest } from "../test/helpers/images.js";
import { startRegistry } from "../test/helpers/registry.js";
import { makeTempDir, removeTempDir } from "../test/helpers/tmp.js";
import { benchLayers } from "./layers.js";
import { fmt, median, nowMs, renderTable } from "./lib.js";

const argv = process.argv.slice(2);
const flag = (name: string) => {
  const i = argv.indexOf(name);
  if (i < 0) return undefined;
  argv.splice(i, 1);
  return true;
};
const optionValue = (name: string) => {
  const i = argv.indexOf(name);
  if (i < 0) return undefined;
  const v = argv[i + 1];
  argv.splice(i, 2);
  return v;
};
const TMPFS = flag("--tmpfs") ?? false;
const SETTLE_MS = Number(optionValue("--settle") ?? (TMPFS ? 2000 : 0));
const REPS = Number(argv[0] ?? 3);
const REPO = "bench/big";
const sha = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

async function timedPull(d: Daemon, cli: "berth" | "ctr", ref: string): Promise<number> {
  const t0 = nowMs();
  const args = ["images", "pull", "--plain-http", ref];
  ok(
    await (cli === "berth" ? berth : ctr)(d.address, args, { timeoutMs: 600_000 }),
    `${cli} pull on ${d.kind}`,
  );
  return nowMs() - t0;
}

function sh(cmd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = spawn("sh", ["-c", cmd], { stdio: ["ignore", "ignore", "inherit"] });
    c.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`${cmd}: exit ${code}`))));
  });
}

async function main(): Promise<void> {
  const layers = await benchLayers();
  const reg = await startRegistry();
  const tmp = await makeTempDir("bench-pull");
  // With --tmpfs every daemon root and the raw extraction live on a tmpfs mounted here.
  const fast = join(tmp, "tmpfs");
  let mounted = false;
  if (TMPFS) {
    mkdirSync(fast);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=8g,mode=0711", "tmpfs", fast]);
    mounted = true;
  }
  const base = TMPFS ? fast : tmp;
  let seq = 0;
  const rootFor = (kind: string) => (TMPFS ? { root: join(fast, `${kind}-${seq++}`) } : {});
  const settle = async () => {
    if (SETTLE_MS <= 0) return;
    execFileSync("sync");
    await new Promise((r) => setTimeout(r, SETTLE_MS));
  };
  try {
    for (const l of layers)
      await pushBlob(reg.url, REPO, {
        mediaType: l.mediaType,
        digest: l.digest,
        size: l.size,
        data: readFileSync(l.path),
      });
    const cfg = Buffer.from(
      JSON.stringify({
        architecture: "amd64",
        os: "linux",
        rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
      }),
    );
    const cfgBlob = {
      mediaType: "application/vnd.oci.image.config.v1+json",
      digest: sha(cfg),
      size: cfg.length,
      data: cfg,
    };
    await pushBlob(reg.url, REPO, cfgBlob);
    const man = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: { mediaType: cfgBlob.mediaType, digest: cfgBlob.digest, size: cfgBlob.size },
        layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
      }),
    );
    await pushManifest(reg.url, REPO, "1", {
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      digest: sha(man),
      size: man.length,
      data: man,
    });
    const ref = `${reg.host}/${REPO}:1`;
    const total = layers.reduce((n, l) => n + l.size, 0);
    const tarTotal = layers.reduce((n, l) => n + l.tarSize, 0);
    process.stdout.write(
      `image: ${layers.length} layers, ${(total / 1e6).toFixed(0)} MB gzip, ${(tarTotal / 1e6).toFixed(0)} MB tar; roots on ${TMPFS ? "tmpfs" : "disk"}, settle ${SETTLE_MS} ms\n`,
    );

    const samples: Record<string, number[]> = {
      berthPullBerthd: [],
      ctrBerthd: [],
      ctrContainerd: [],
      raw: [],
    };
    for (let rep = 0; rep < REPS; rep++) {
      const runs: [string, () => Promise<number>][] = [
        [
          "berthPullBerthd",
          async () =>
            withDaemon(
              () => startBerthd({ logLevel: "warn", ...rootFor("berthd") }),
              (d) => timedPull(d, "berth", ref),
            ),
        ],
        [
          "ctrBerthd",
          async () =>
            withDaemon(
              () => startBerthd({ logLevel: "warn", ...rootFor("berthd") }),
              (d) => timedPull(d, "ctr", ref),
            ),
        ],
        [
          "ctrContainerd",
          async () =>
            withDaemon(
              () => startContainerd({ logLevel: "warn", ...rootFor("containerd") }),
              (d) => timedPull(d, "ctr", ref),
            ),
        ],
        [
          "raw",
          async () => {
            const dir = join(base, `raw-${rep}`);
            const t0 = nowMs();
            await Promise.all(
              layers.map(async (l, i) => {
                mkdirSync(join(dir, String(i)), { recursive: true });
                await sh(
                  `curl -sf ${reg.url}/v2/${REPO}/blobs/${l.digest} | tar -xz -C ${join(dir, String(i))}`,
                );
              }),
            );
            const ms = nowMs() - t0;
            rmSync(dir, { recursive: true, force: true });
            return ms;
          },
        ],
      ];
      const order = rep % 2 === 0 ? runs : [...runs].reverse();
      for (const [name, fn] of order) {
        await settle();
        const ms = await fn();
        samples[name]!.push(ms);
        process.stdout.write(`rep ${rep + 1} ${name}: ${fmt(ms)} ms\n`);
      }
    }
    const m = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, median(v)]));
    process.stdout.write(
      `\n${renderTable(
        ["measure", "median ms", "ratio"],
        [
          [
            "(a) berth images pull @berthd",
            fmt(m.berthPullBerthd!),
            `${(m.berthPullBerthd! / m.ctrContainerd!).toFixed(2)}x vs ctr@containerd`,
          ],
          [
            "(b) ctr images pull @berthd",
            fmt(m.ctrBerthd!),
            `${(m.ctrBerthd! / m.ctrContainerd!).toFixed(2)}x vs ctr@containerd`,
          ],
          ["    ctr images pull @containerd", fmt(m.ctrContainerd!), "1.00x"],
          [
            "(c) raw: curl | tar -xz, parallel",
            fmt(m.raw!),
            `berth pull = ${(m.berthPullBerthd! / m.raw!).toFixed(2)}x raw`,
          ],
        ],
      )}\n`,
    );
  } finally {
    await reg.cleanup();
    if (mounted) {
      try {
        execFileSync("umount", [fast]);
      } catch {
        execFileSync("umount", ["-l", fast]);
      }
    }
    await removeTempDir(tmp);
  }
}

async function withDaemon(start: () => Promise<Daemon>, fn: (d: Daemon) => Promise<number>): Promise<number> {
  const d = await start();
  try {
    return await fn(d);
  } finally {
    await d.cleanup();
    // a root given to the daemon is not its temp dir: drop it (snapshot mounts are gone by now)
    if (TMPFS && d.root.startsWith(`${d.dir}/`) === false) rmSync(d.root, { recursive: true, force: true });
  }
}

await main();
