// `berth check`: is what the daemon holds whole? Run after a crash (or any time): every image's
// blobs are there and hash to their digests, every snapshot has its data and its parent chain, no
// record lacks its file and no file its record (prune's listing), no mounts or shims are left
// over, and every running task answers. Missing or corrupt data is an error; debris is a warning;
// what the next collection removes anyway is only information.
import { createHash } from "node:crypto";
import { createReadStream, existsSync, readdirSync, readFileSync } from "node:fs";
import { basename } from "node:path";
import { isNotFound } from "../../base/errdefs.js";
import { parseNode, RefGraph } from "./collector.js";
import { type GcEnv, type Orphan, prune } from "./prune.js";

export type Severity = "error" | "warning" | "info";

export interface Problem {
  severity: Severity;
  /** missing-blob, corrupt-blob, missing-content, missing-snapshot, missing-parent, orphan, ... */
  kind: string;
  object: string;
  detail: string;
}

export interface CheckReport {
  problems: Problem[];
  images: number;
  blobsVerified: number;
  snapshots: number;
  tasks: number;
}

export interface CheckOptions {
  /** Hash every blob (default). Off: only check that the files are there. */
  verify?: boolean;
  /** How long a task may take to answer its state (default 5 s). */
  taskTimeoutMs?: number;
}

/** The digest of a file, in the digest's algorithm. */
async function fileDigest(path: string, algorithm: string): Promise<string> {
  const h = createHash(algorithm);
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return `${algorithm}:${h.digest("hex")}`;
}

const MANIFEST_REF = /^containerd\.io\/gc\.ref\.content\.(?:m|manifest)[./]/;

/** Severity and kind of each prune finding, as check reports it. */
const ORPHAN_PROBLEM: Record<Orphan["kind"], [Severity, string]> = {
  // the collector's backend sweep removes both (a crash between a blob's rename and its record,
  // or between an ingest's directory and its row, leaves them): information, as collectable is
  blob: ["info", "orphan-blob"],
  ingest: ["info", "orphan-ingest"],
  "ingest-row": ["warning", "orphan-ingest-record"],
  "content-row": ["error", "missing-blob"],
  "snapshot-dir": ["warning", "orphan-snapshot-dir"],
  "snapshot-record": ["error", "missing-snapshot-dir"],
  "snapshot-row": ["error", "missing-snapshot"],
  snapshot: ["info", "collectable"],
  bundle: ["warning", "stale-bundle"],
  "work-dir": ["warning", "stale-bundle"],
  mount: ["warning", "leaked-mount"],
};

/** Shim processes started for this daemon: `<shim> -namespace N -id I -address <address> ...`. */
export function shimProcesses(address: string): { pid: number; namespace: string; id: string }[] {
  const addr = address.replace(/^unix:\/\//, "");
  const out: { pid: number; namespace: string; id: string }[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    let argv: string[];
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) continue;
      argv = readFileSync(`/proc/${name}/cmdline`, "utf8").split("\0");
    } catch {
      continue; // gone meanwhile
    }
    if (!argv[0] || !basename(argv[0]).startsWith("containerd-shim")) continue;
    const arg = (flag: string) => {
      const i = argv.indexOf(flag);
      return i >= 0 ? (argv[i + 1] ?? "") : "";
    };
    if (arg("-address").replace(/^unix:\/\//, "") !== addr) continue;
    // `start` and `delete` are short-lived invocations, not the shim server
    if (argv.includes("start") || argv.includes("delete")) continue;
    out.push({ pid: Number(name), namespace: arg("-namespace"), id: arg("-id") });
  }
  return out;
}

export async function check(env: GcEnv, opts: CheckOptions = {}): Promise<CheckReport> {
  const verify = opts.verify ?? true;
  const problems: Problem[] = [];
  const add = (severity: Severity, kind: string, object: string, detail: string) =>
    problems.push({ severity, kind, object, detail });
  const backend = env.content.backend;
  const report: CheckReport = { problems, images: 0, blobsVerified: 0, snapshots: 0, tasks: 0 };

  const { graph, digests } = env.db.sql
    .transaction(() => ({
      graph: new RefGraph(env.db, Date.now()),
      digests: env.db.stmt("SELECT DISTINCT digest FROM content ORDER BY digest").pluck().all() as string[],
    }))
    .deferred();

  // Blobs: present and hashing to their digest (each file once, whatever holds it).
  const blobState = new Map<string, "ok" | "missing" | "corrupt">();
  const blobDetail = new Map<string, string>();
  const checkBlob = async (digest: string): Promise<"ok" | "missing" | "corrupt"> => {
    const known = blobState.get(digest);
    if (known) return known;
    let path: string;
    try {
      path = backend.blobPath(digest);
    } catch {
      blobState.set(digest, "corrupt");
      blobDetail.set(digest, "not a valid digest");
      return "corrupt";
    }
    let state: "ok" | "missing" | "corrupt" = "ok";
    if (!existsSync(path)) state = "missing";
    else if (verify) {
      const alg = digest.slice(0, digest.indexOf(":"));
      try {
        const got = await fileDigest(path, alg);
        report.blobsVerified++;
        if (got !== digest) {
          state = "corrupt";
          blobDetail.set(digest, `${path} hashes to ${got}`);
        }
      } catch (err) {
        state = "corrupt";
        blobDetail.set(digest, `cannot read ${path}: ${(err as Error).message}`);
      }
    }
    blobState.set(digest, state);
    return state;
  };

  // Images: the target and everything its content references, as the collector keeps them.
  const reported = new Set<string>();
  for (const root of graph.roots) {
    if (root.reason !== "image") continue;
    report.images++;
    const image = parseNode(root.node);
    const seen = new Set<string>();
    const queue = graph.edges(root.node).filter((e) => e.to.startsWith("c\0"));
    while (queue.length > 0) {
      const e = queue.shift()!;
      if (seen.has(e.to)) continue;
      seen.add(e.to);
      const c = parseNode(e.to);
      const what = `image ${image.name} (${image.namespace})`;
      if (!graph.has(e.to)) {
        // An index names every platform's manifest; only the platforms pulled are there.
        if (MANIFEST_REF.test(e.via)) continue;
        add("error", "missing-content", c.name, `${what}: no content record (referenced by ${e.via})`);
        continue;
      }
      const state = await checkBlob(c.name);
      if (state !== "ok" && !reported.has(`${state}\0${c.name}`)) {
        reported.add(`${state}\0${c.name}`);
        if (state === "missing")
          add("error", "missing-blob", c.name, `${what}: blob file ${backend.blobPath(c.name)} is gone`);
        else add("error", "corrupt-blob", c.name, `${what}: ${blobDetail.get(c.name)}`);
      }
      for (const next of graph.edges(e.to)) if (next.to.startsWith("c\0")) queue.push(next);
    }
  }
  // Every other blob with a record.
  for (const d of digests) {
    const state = await checkBlob(d);
    if (state === "corrupt" && !reported.has(`corrupt\0${d}`)) {
      reported.add(`corrupt\0${d}`);
      add("error", "corrupt-blob", d, blobDetail.get(d) ?? "does not hash to its digest");
    }
  }

  // Snapshots: each record's parent record is there (prune's listing covers the data).
  for (const node of graph.nodes()) {
    if (!node.startsWith("s\0")) continue;
    report.snapshots++;
    const s = parseNode(node);
    for (const e of graph.edges(node))
      if (e.via === "parent" && !graph.has(e.to))
        add(
          "error",
          "missing-parent",
          `${s.snapshotter}:${s.namespace}/${s.name}`,
          `parent snapshot ${parseNode(e.to).name} has no record`,
        );
  }

  // ... and its backend snapshot stacks on its parent's backend snapshot.
  for (const sn of env.snapshots?.all() ?? []) {
    const rows = env.db
      .stmt("SELECT namespace, key, backend_key, parent FROM snapshots WHERE snapshotter = ?")
      .all(sn.name) as { namespace: string; key: string; backend_key: string; parent: string }[];
    const byName = new Map(rows.map((r) => [`${r.namespace}\0${r.key}`, r.backend_key]));
    const backendParent = new Map((await sn.backend.list()).map((i) => [i.name, i.parent]));
    for (const r of rows) {
      const got = backendParent.get(r.backend_key);
      const want = r.parent ? byName.get(`${r.namespace}\0${r.parent}`) : "";
      if (got === undefined || want === undefined) continue; // reported as missing elsewhere
      if (got !== want)
        add(
          "error",
          "wrong-parent",
          `${sn.name}:${r.namespace}/${r.key}`,
          `stacked on ${got || "nothing"}, its parent ${r.parent || "(none)"} is ${want || "nothing"}`,
        );
    }
  }

  // Rows without files and files without rows, stale bundles and leaked mounts.
  for (const o of await prune(env, false)) {
    const [severity, kind] = ORPHAN_PROBLEM[o.kind];
    if (o.kind === "content-row") {
      const digest = o.object.slice(o.object.indexOf("/") + 1);
      if (reported.has(`missing\0${digest}`)) continue;
    }
    add(severity, kind, o.object, o.detail);
  }

  // What the next collection removes.
  const live = graph.mark();
  for (const node of graph.nodes()) {
    if (live.has(node) || !(node.startsWith("c\0") || node.startsWith("s\0"))) continue;
    const p = parseNode(node);
    const name =
      p.kind === "snapshot" ? `${p.snapshotter}:${p.namespace}/${p.name}` : `${p.namespace}/${p.name}`;
    add("info", "collectable", name, `${p.kind} nothing references: the next collection removes it`);
  }

  // Shims and tasks.
  if (env.tasks) {
    for (const s of shimProcesses(env.address))
      if (!env.tasks.has(s.namespace, s.id))
        add(
          "warning",
          "orphaned-shim",
          `pid ${s.pid}`,
          `shim for ${s.namespace}/${s.id}, a task the daemon does not know`,
        );
    const timeoutMs = opts.taskTimeoutMs ?? 5000;
    for (const t of env.tasks.list()) {
      report.tasks++;
      try {
        await t.state({ timeoutMs });
      } catch (err) {
        add(
          "warning",
          isNotFound(err) ? "lost-task" : "unreachable-task",
          `${t.namespace}/${t.id}`,
          `the task's shim does not answer: ${(err as Error).message}`,
        );
      }
    }
  }
  return report;
}
