// Cold pull of a 6-layer image from a local docker-registry, per image variant:
//   (a) `berth images pull` on berthd (daemon-side, Transfer service) vs `ctr images pull` on containerd
//   (b) `ctr images pull` (client-side in ctr 1.6) on berthd vs on containerd
//   (c) raw limit: fetch every blob and decompress + `tar -x` it (layers in parallel, own dirs)
// Variants (bench/layers.ts): gzip — the ~300 MB (tar) mixed set, gzip; zstd — the same set
// compressed with the zstd binary (application/vnd.oci.image.layer.v1.tar+zstd; the raw limit uses
// `zstd -d | tar -x`); small — ~20k files of 1-16 KiB in six gzip layers.
// Every measurement starts a fresh daemon (cold: empty content store and snapshotter); medians of
// REPS (default 3), the order of the contenders reversed every other rep. Each is timed and its
// CPU counted: the daemon's own, that of the children it reaped (berthd's `zstd`) and the
// client's; for the raw limit, curl's, the decompressor's and tar's.
// Usage: node dist/bench/pull.js [reps] [--variants gzip,zstd,small] [--scale F | --quick] [--tmpfs]
// [--settle MS]. --scale multiplies the sets' entry counts (F in (0, 1], default 1); --quick is
// --scale 0.2 with 1 rep unless reps are given. --tmpfs puts the daemons' roots (and the raw
// extraction) on a tmpfs mounted for the run and unmounted after, taking the disk out of the
// comparison; --settle waits between runs (default 2000 ms with --tmpfs, else 0) after a sync, so
// one run's writeback does not tax the next.
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { berth, ctr, ok } from "../test/helpers/ctr.js";
import { CRI_PLUGIN, type Daemon, startBerthd, startContainerd } from "../test/helpers/daemons.js";
import { pushBlob, pushManifest } from "../test/helpers/images.js";
import { type Registry, startRegistry } from "../test/helpers/registry.js";
import { makeTempDir, removeTempDir } from "../test/helpers/tmp.js";
import { benchLayerSet, type LayerCompression, type LayerFile, type LayerSetName } from "./layers.js";
import { childrenCpuSeconds, cpuSeconds, fmt, median, nowMs, renderTable } from "./lib.js";

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

interface Variant {
  set: LayerSetName;
  compression: LayerCompression;
  what: string;
}
const VARIANTS: Record<string, Variant> = {
  gzip: { set: "big", compression: "gzip", what: "mixed ~300 MB tar set, gzip" },
  zstd: { set: "big", compression: "zstd", what: "mixed ~300 MB tar set, zstd" },
  small: { set: "small", compression: "gzip", what: "~20k files of 1-16 KiB, gzip" },
};

const TMPFS = flag("--tmpfs") ?? false;
const QUICK = flag("--quick") ?? false;
const SETTLE_MS = Number(optionValue("--settle") ?? (TMPFS ? 2000 : 0));
const SCALE = Number(optionValue("--scale") ?? (QUICK ? 0.2 : 1));
const VARIANT_NAMES = (optionValue("--variants") ?? Object.keys(VARIANTS).join(","))
  .split(",")
  .map((v) => v.trim())
  .filter(Boolean);
for (const v of VARIANT_NAMES)
  if (!VARIANTS[v]) throw new Error(`unknown variant ${v} (known: ${Object.keys(VARIANTS).join(", ")})`);
if (!(SCALE > 0 && SCALE <= 1)) throw new Error(`--scale ${SCALE}: want a number in (0, 1]`);
const REPS = Number(argv[0] ?? (QUICK ? 1 : 3));
const sha = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** One timed pull: wall time, and the CPU it took (see cpuOf). */
interface Sample {
  ms: number;
  cpuS: number;
}

/**
 * CPU seconds used so far by a daemon (itself and the children it reaped: berthd's `zstd`) and by
 * the children this process reaped (the `berth`/`ctr` client, or the raw pipeline's curl,
 * decompressor and tar). On two cores a pull is bound by CPU, so this is what a native extractor
 * would save; the registry's CPU is in no contender's count.
 */
function cpuOf(d?: Daemon): number {
  return childrenCpuSeconds("self") + (d ? cpuSeconds(d.pid) + childrenCpuSeconds(d.pid) : 0);
}

async function timedPull(d: Daemon, cli: "berth" | "ctr", ref: string): Promise<Sample> {
  const c0 = cpuOf(d);
  const t0 = nowMs();
  const args = ["images", "pull", "--plain-http", ref];
  ok(
    await (cli === "berth" ? berth : ctr)(d.address, args, { timeoutMs: 600_000 }),
    `${cli} pull on ${d.kind}`,
  );
  const ms = nowMs() - t0;
  return { ms, cpuS: cpuOf(d) - c0 };
}

function sh(cmd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = spawn("bash", ["-o", "pipefail", "-c", cmd], { stdio: ["ignore", "ignore", "inherit"] });
    c.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`${cmd}: exit ${code}`))));
  });
}

/** Pushes the layers with a config and an OCI manifest as `<repo>:1`; returns the reference. */
async function pushBenchImage(reg: Registry, repo: string, layers: LayerFile[]): Promise<string> {
  for (const l of layers)
    await pushBlob(reg.url, repo, {
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
  await pushBlob(reg.url, repo, cfgBlob);
  const man = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: { mediaType: cfgBlob.mediaType, digest: cfgBlob.digest, size: cfgBlob.size },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
    }),
  );
  await pushManifest(reg.url, repo, "1", {
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    digest: sha(man),
    size: man.length,
    data: man,
  });
  return `${reg.host}/${repo}:1`;
}

interface VariantResult {
  name: string;
  berthPullBerthd: number;
  ctrBerthd: number;
  ctrContainerd: number;
  raw: number;
  /** Median CPU seconds per pull, by contender (cpuOf). */
  cpuS: { berthPullBerthd: number; ctrBerthd: number; ctrContainerd: number; raw: number };
}

interface Env {
  reg: Registry;
  /** Where the raw extraction goes (the tmpfs with --tmpfs). */
  base: string;
  rootFor: (kind: string) => { root?: string };
  settle: () => Promise<void>;
}

async function runVariant(name: string, env: Env): Promise<VariantResult> {
  const v = VARIANTS[name]!;
  const t0 = nowMs();
  const layers = await benchLayerSet({ set: v.set, compression: v.compression, scale: SCALE });
  const genMs = nowMs() - t0;
  const repo = `bench/${name}`;
  const ref = await pushBenchImage(env.reg, repo, layers);
  const total = layers.reduce((n, l) => n + l.size, 0);
  const tarTotal = layers.reduce((n, l) => n + l.tarSize, 0);
  const entries = layers.reduce((n, l) => n + l.entries, 0);
  process.stdout.write(
    `\n== variant ${name} (${v.what}, scale ${SCALE}): ${layers.length} layers, ${(total / 1e6).toFixed(1)} MB ${v.compression}, ` +
      `${(tarTotal / 1e6).toFixed(1)} MB tar, ${entries} entries (layers ready in ${fmt(genMs)} ms)\n`,
  );
  const unpack = v.compression === "gzip" ? "tar -xz" : "zstd -dcq | tar -x";
  const samples: Record<string, Sample[]> = {
    berthPullBerthd: [],
    ctrBerthd: [],
    ctrContainerd: [],
    raw: [],
  };
  for (let rep = 0; rep < REPS; rep++) {
    const runs: [string, () => Promise<Sample>][] = [
      [
        "berthPullBerthd",
        async () =>
          withDaemon(
            () => startBerthd({ logLevel: "warn", disabledPlugins: [CRI_PLUGIN], ...env.rootFor("berthd") }),
            (d) => timedPull(d, "berth", ref),
          ),
      ],
      [
        "ctrBerthd",
        async () =>
          withDaemon(
            () => startBerthd({ logLevel: "warn", disabledPlugins: [CRI_PLUGIN], ...env.rootFor("berthd") }),
            (d) => timedPull(d, "ctr", ref),
          ),
      ],
      [
        "ctrContainerd",
        async () =>
          withDaemon(
            () =>
              startContainerd({
                logLevel: "warn",
                disabledPlugins: [CRI_PLUGIN],
                ...env.rootFor("containerd"),
              }),
            (d) => timedPull(d, "ctr", ref),
          ),
      ],
      [
        "raw",
        async () => {
          const dir = join(env.base, `raw-${name}-${rep}`);
          const c0 = cpuOf();
          const t0 = nowMs();
          await Promise.all(
            layers.map(async (l, i) => {
              mkdirSync(join(dir, String(i)), { recursive: true });
              await sh(
                `curl -sf ${env.reg.url}/v2/${repo}/blobs/${l.digest} | ${unpack} -C ${join(dir, String(i))}`,
              );
            }),
          );
          const sample = { ms: nowMs() - t0, cpuS: cpuOf() - c0 };
          rmSync(dir, { recursive: true, force: true });
          return sample;
        },
      ],
    ];
    const order = rep % 2 === 0 ? runs : [...runs].reverse();
    for (const [what, fn] of order) {
      await env.settle();
      const sample = await fn();
      samples[what]!.push(sample);
      process.stdout.write(
        `rep ${rep + 1} ${what}: ${fmt(sample.ms)} ms, ${sample.cpuS.toFixed(2)} s of CPU\n`,
      );
    }
  }
  const m = Object.fromEntries(Object.entries(samples).map(([k, xs]) => [k, median(xs.map((x) => x.ms))]));
  const c = Object.fromEntries(Object.entries(samples).map(([k, xs]) => [k, median(xs.map((x) => x.cpuS))]));
  const r: VariantResult = {
    name,
    berthPullBerthd: m.berthPullBerthd!,
    ctrBerthd: m.ctrBerthd!,
    ctrContainerd: m.ctrContainerd!,
    raw: m.raw!,
    cpuS: {
      berthPullBerthd: c.berthPullBerthd!,
      ctrBerthd: c.ctrBerthd!,
      ctrContainerd: c.ctrContainerd!,
      raw: c.raw!,
    },
  };
  const rawWhat = v.compression === "gzip" ? "curl | tar -xz" : "curl | zstd -d | tar -x";
  process.stdout.write(
    `\n${renderTable(
      [`${name}: measure`, "median ms", "ratio", "CPU s"],
      [
        [
          "(a) berth images pull @berthd",
          fmt(r.berthPullBerthd),
          `${(r.berthPullBerthd / r.ctrContainerd).toFixed(2)}x vs ctr@containerd`,
          r.cpuS.berthPullBerthd.toFixed(2),
        ],
        [
          "(b) ctr images pull @berthd",
          fmt(r.ctrBerthd),
          `${(r.ctrBerthd / r.ctrContainerd).toFixed(2)}x vs ctr@containerd`,
          r.cpuS.ctrBerthd.toFixed(2),
        ],
        ["    ctr images pull @containerd", fmt(r.ctrContainerd), "1.00x", r.cpuS.ctrContainerd.toFixed(2)],
        [
          `(c) raw: ${rawWhat}, parallel`,
          fmt(r.raw),
          `berth pull = ${(r.berthPullBerthd / r.raw).toFixed(2)}x raw`,
          r.cpuS.raw.toFixed(2),
        ],
      ],
    )}\n`,
  );
  return r;
}

async function main(): Promise<void> {
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
  let seq = 0;
  const env: Env = {
    reg,
    base: TMPFS ? fast : tmp,
    rootFor: (kind: string) => (TMPFS ? { root: join(fast, `${kind}-${seq++}`) } : {}),
    settle: async () => {
      if (SETTLE_MS <= 0) return;
      execFileSync("sync");
      await new Promise((r) => setTimeout(r, SETTLE_MS));
    },
  };
  const la = () =>
    loadavg()
      .map((x) => x.toFixed(2))
      .join(" ");
  process.stdout.write(
    `pull bench: variants ${VARIANT_NAMES.join(",")}, ${REPS} rep(s), scale ${SCALE}, roots on ${TMPFS ? "tmpfs" : "disk"}, settle ${SETTLE_MS} ms, load ${la()}\n`,
  );
  try {
    const results: VariantResult[] = [];
    for (const name of VARIANT_NAMES) results.push(await runVariant(name, env));
    process.stdout.write(
      `\nsummary (medians of ${REPS}, ms; load at end ${la()})\n${renderTable(
        [
          "variant",
          "berth@berthd",
          "ctr@berthd",
          "ctr@containerd",
          "raw",
          "(a) berth@berthd/ctr@ctrd",
          "(b) ctr@berthd/ctr@ctrd",
          "berth/raw",
        ],
        results.map((r) => [
          r.name,
          fmt(r.berthPullBerthd),
          fmt(r.ctrBerthd),
          fmt(r.ctrContainerd),
          fmt(r.raw),
          (r.berthPullBerthd / r.ctrContainerd).toFixed(2),
          (r.ctrBerthd / r.ctrContainerd).toFixed(2),
          (r.berthPullBerthd / r.raw).toFixed(2),
        ]),
      )}\n`,
    );
    // On two cores a pull is bound by CPU: these say how much of the gap to the raw limit is work
    // the daemon does that curl, the decompressor and tar do not.
    process.stdout.write(
      `\nCPU seconds per pull (medians; the daemon, the children it reaped and the client; raw: curl, decompressor, tar)\n${renderTable(
        [
          "variant",
          "berth@berthd",
          "ctr@berthd",
          "ctr@containerd",
          "raw",
          "(a)/ctr@ctrd",
          "(b)/ctr@ctrd",
          "berth/raw",
        ],
        results.map((r) => [
          r.name,
          r.cpuS.berthPullBerthd.toFixed(2),
          r.cpuS.ctrBerthd.toFixed(2),
          r.cpuS.ctrContainerd.toFixed(2),
          r.cpuS.raw.toFixed(2),
          (r.cpuS.berthPullBerthd / r.cpuS.ctrContainerd).toFixed(2),
          (r.cpuS.ctrBerthd / r.cpuS.ctrContainerd).toFixed(2),
          (r.cpuS.berthPullBerthd / r.cpuS.raw).toFixed(2),
        ]),
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

async function withDaemon(start: () => Promise<Daemon>, fn: (d: Daemon) => Promise<Sample>): Promise<Sample> {
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
