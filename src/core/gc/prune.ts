// `berth gc prune`: what a crash can leave where the metadata and the disk disagree, and its
// removal. The collector removes what nothing references; this removes what no record accounts
// for (files without rows), records whose data is gone (rows without files), task bundles no task
// owns and mounts under the daemon's directories no task owns. Each part holds the lock its
// owner's writers take (the content store's, a snapshotter's gate), so what it finds is what it
// removes and nothing being created is ever taken for debris.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { type Logger, nopLogger } from "../../base/log.js";
import { MNT_DETACH } from "../../sys/mount.js";
import { backendRef, type MetadataContentStore } from "../content/metadata.js";
import { FREES, type MetadataDB } from "../metadata/db.js";
import { unmountAll } from "../mount/mount.js";
import { bundlePaths, deleteBundle } from "../runtime/bundle.js";
import { LocalSnapshotter } from "../snapshots/local.js";
import type { NamespacedSnapshotter, SnapshotService } from "../snapshots/metadata.js";

/** The runtime v2 plugin's directory name under the daemon's root and state. */
export const RUNTIME_DIR = "io.containerd.runtime.v2.task";
/** Plugins that mount under their own directories and answer for those mounts themselves. */
const SELF_MANAGED_MOUNT_DIRS = ["io.containerd.grpc.v1.cri"];

/** What prune and check need of the daemon. */
export interface GcEnv {
  db: MetadataDB;
  content: MetadataContentStore;
  snapshots?: SnapshotService;
  /** The task manager, when the runtime plugin is loaded (else bundles and mounts are left alone). */
  tasks?: {
    has(ns: string, id: string): boolean;
    list(): { namespace: string; id: string; state(opts?: { timeoutMs?: number }): Promise<unknown> }[];
  };
  /** The daemon's root and state directories. */
  root: string;
  state: string;
  /** The daemon's gRPC address, which its shims carry on their command line. */
  address: string;
  log?: Logger;
}

export type OrphanKind =
  | "blob"
  | "ingest"
  | "ingest-row"
  | "content-row"
  | "snapshot-dir"
  | "snapshot-record"
  | "snapshot-row"
  | "snapshot"
  | "bundle"
  | "work-dir"
  | "mount";

export interface Orphan {
  kind: OrphanKind;
  /** A path, a digest or `<snapshotter>:<key>` / `<namespace>/<name>`. */
  object: string;
  detail: string;
  /** Set by a removal: whether it went, and why not. */
  removed: boolean;
  error: string;
}

const orphan = (kind: OrphanKind, object: string, detail: string): Orphan => ({
  kind,
  object,
  detail,
  removed: false,
  error: "",
});

async function attempt(o: Orphan, fn: () => Promise<void> | void): Promise<void> {
  try {
    await fn();
    o.removed = true;
  } catch (err) {
    o.error = (err as Error).message;
  }
}

// --- mounts --------------------------------------------------------------------------------------

interface MountEntry {
  mountPoint: string;
  /** The whole mountinfo line: its root, source and options name the paths the mount uses. */
  line: string;
}

const unescapeMount = (s: string) =>
  s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));

export function readMounts(): MountEntry[] {
  let text = "";
  try {
    text = readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return [];
  }
  const out: MountEntry[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(" ");
    if (f.length < 5) continue;
    out.push({ mountPoint: unescapeMount(f[4]!), line: unescapeMount(line) });
  }
  return out;
}

const under = (path: string, dir: string) => path.startsWith(`${dir}/`);

/** Whether a mount sits at or below `path`, or uses something below it (an overlay layer). */
export function inUse(path: string, mounts: MountEntry[]): string | undefined {
  for (const m of mounts) {
    if (m.mountPoint === path || under(m.mountPoint, path)) return `mounted on ${m.mountPoint}`;
    if (m.line.includes(`${path}/`) || m.line.includes(`${path} `) || m.line.includes(`${path},`))
      return `used by the mount on ${m.mountPoint}`;
  }
  return undefined;
}

/** Mounts under the daemon's root or state that no task owns, deepest first. */
export function leakedMounts(env: GcEnv, mounts = readMounts()): Orphan[] {
  if (!env.tasks) return [];
  const runtimeState = join(env.state, RUNTIME_DIR);
  const owned = (mp: string): boolean => {
    for (const dir of SELF_MANAGED_MOUNT_DIRS)
      if (under(mp, join(env.root, dir)) || under(mp, join(env.state, dir))) return true;
    if (under(mp, runtimeState)) {
      const [ns, id] = mp.slice(runtimeState.length + 1).split("/");
      return ns !== undefined && id !== undefined && !id.startsWith(".") && env.tasks!.has(ns, id);
    }
    return false;
  };
  const seen = new Set<string>();
  const out: Orphan[] = [];
  for (const m of mounts) {
    const mp = m.mountPoint;
    if (seen.has(mp)) continue;
    if (!under(mp, env.root) && !under(mp, env.state)) continue;
    if (owned(mp)) continue;
    seen.add(mp);
    out.push(orphan("mount", mp, "a mount under the daemon's directories that no task owns"));
  }
  return out.sort((a, b) => b.object.length - a.object.length);
}

// --- content -------------------------------------------------------------------------------------

async function contentOrphans(env: GcEnv, apply: boolean): Promise<Orphan[]> {
  const store = env.content;
  const backend = store.backend;
  return store.lock.exclusive(async () => {
    const { digests, rows, ingests } = env.db.sql
      .transaction(() => ({
        digests: new Set(env.db.stmt("SELECT DISTINCT digest FROM content").pluck().all() as string[]),
        rows: env.db.stmt("SELECT namespace, digest FROM content ORDER BY namespace, digest").all() as {
          namespace: string;
          digest: string;
        }[],
        ingests: env.db
          .stmt("SELECT namespace, ref, expected FROM ingests ORDER BY namespace, ref")
          .all() as {
          namespace: string;
          ref: string;
          expected: string;
        }[],
      }))
      .deferred();
    const out: Orphan[] = [];
    // a shared ingest's blob may belong to no namespace yet (as the sweep keeps it)
    for (const i of ingests) if (i.expected) digests.add(i.expected);

    const blobs: string[] = [];
    await backend.walk((info) => {
      if (!digests.has(info.digest)) blobs.push(info.digest);
    });
    for (const d of blobs) {
      const o = orphan("blob", backend.blobPath(d), `blob ${d} has no content record in any namespace`);
      out.push(o);
      if (apply) await attempt(o, () => backend.delete(d));
    }

    const ingestDir = join(backend.root, "ingest");
    const wanted = new Set(ingests.map((i) => backend.ingestRoot(backendRef(i.namespace, i.ref))));
    let names: string[] = [];
    try {
      names = readdirSync(ingestDir).sort();
    } catch {
      // no ingest directory yet
    }
    for (const name of names) {
      const dir = join(ingestDir, name);
      if (wanted.has(dir)) continue;
      let ref = "";
      try {
        ref = readFileSync(join(dir, "ref"), "utf8");
      } catch {
        // debris without its ref file
      }
      const o = orphan(
        "ingest",
        dir,
        ref ? `ingest ${JSON.stringify(ref)} has no record` : "ingest without a ref",
      );
      out.push(o);
      if (apply) await attempt(o, () => rm(dir, { recursive: true, force: true }));
    }

    const delIngest = env.db.stmt("DELETE FROM ingests WHERE namespace = ? AND ref = ?");
    for (const i of ingests) {
      // a shared ingest copies nothing: it has no directory of its own
      if (i.expected) continue;
      const dir = backend.ingestRoot(backendRef(i.namespace, i.ref));
      if (existsSync(join(dir, "data"))) continue;
      const o = orphan("ingest-row", `${i.namespace}/${i.ref}`, `ingest record without data (${dir})`);
      out.push(o);
      if (apply) await attempt(o, () => void env.db.tx(() => delIngest.run(i.namespace, i.ref), FREES));
    }

    const delContent = env.db.stmt("DELETE FROM content WHERE namespace = ? AND digest = ?");
    let deleted = false;
    for (const r of rows) {
      if (existsSync(backend.blobPath(r.digest))) continue;
      const o = orphan(
        "content-row",
        `${r.namespace}/${r.digest}`,
        `content record without its blob (${backend.blobPath(r.digest)})`,
      );
      out.push(o);
      if (apply)
        await attempt(o, () => {
          env.db.tx(() => delContent.run(r.namespace, r.digest), FREES);
          deleted = true;
        });
    }
    if (deleted) env.db.mutated(true);
    return out;
  });
}

// --- snapshots -----------------------------------------------------------------------------------

interface SnapshotRow {
  namespace: string;
  key: string;
  backend_key: string;
  parent: string;
}

async function snapshotterOrphans(
  env: GcEnv,
  sn: NamespacedSnapshotter,
  apply: boolean,
  mounts: MountEntry[],
): Promise<Orphan[]> {
  const backend = sn.backend;
  return sn.exclusive(async () => {
    const out: Orphan[] = [];
    const inv = backend instanceof LocalSnapshotter ? backend.inventory() : { strayDirs: [], missing: [] };
    const infos = await backend.list();
    const rows = env.db
      .stmt(
        "SELECT namespace, key, backend_key, parent FROM snapshots WHERE snapshotter = ? ORDER BY namespace, key",
      )
      .all(sn.name) as SnapshotRow[];
    const backendKeys = new Set(infos.map((i) => i.name));
    const referenced = new Set(rows.map((r) => r.backend_key));
    const children = new Map<string, string[]>();
    for (const i of infos) if (i.parent) children.set(i.parent, [...(children.get(i.parent) ?? []), i.name]);
    const descendants = (key: string): string[] => {
      const acc: string[] = [];
      const walk = (k: string) => {
        for (const c of children.get(k) ?? []) {
          acc.push(c);
          walk(c);
        }
      };
      walk(key);
      return acc;
    };

    for (const dir of inv.strayDirs)
      out.push(orphan("snapshot-dir", dir, `no ${sn.name} snapshot owns this directory`));

    // Backend snapshots to remove, and why: those whose directory is gone (with everything
    // stacked on them: unusable without it), and those no namespace refers to (unless something
    // stacked on them still is referred to, as the collector would keep them).
    const removeBackend = new Map<string, Orphan>();
    for (const m of inv.missing) {
      const o = orphan(
        "snapshot-record",
        `${sn.name}:${m.key}`,
        `${m.kind} snapshot whose directory ${join((backend as LocalSnapshotter).snapshotsDir, m.id)} is gone`,
      );
      out.push(o);
      removeBackend.set(m.key, o);
      for (const d of descendants(m.key))
        if (!removeBackend.has(d)) {
          const c = orphan(
            "snapshot-record",
            `${sn.name}:${d}`,
            `stacked on ${m.key}, whose directory is gone`,
          );
          out.push(c);
          removeBackend.set(d, c);
        }
    }
    for (const i of infos) {
      if (referenced.has(i.name) || removeBackend.has(i.name)) continue;
      if (descendants(i.name).some((d) => referenced.has(d))) continue;
      const o = orphan("snapshot", `${sn.name}:${i.name}`, "backend snapshot no namespace refers to");
      out.push(o);
      removeBackend.set(i.name, o);
    }
    // Namespace records whose backend snapshot is gone or going, with what is stacked on them.
    const removeRows: { row: SnapshotRow; o: Orphan }[] = [];
    const rowKey = (r: { namespace: string; key: string }) => `${r.namespace}\0${r.key}`;
    const rowChildren = new Map<string, SnapshotRow[]>();
    for (const r of rows)
      if (r.parent) {
        const k = rowKey({ namespace: r.namespace, key: r.parent });
        rowChildren.set(k, [...(rowChildren.get(k) ?? []), r]);
      }
    const taken = new Set<string>();
    const takeRow = (r: SnapshotRow, detail: string) => {
      if (taken.has(rowKey(r))) return;
      taken.add(rowKey(r));
      const o = orphan("snapshot-row", `${sn.name}:${r.namespace}/${r.key}`, detail);
      out.push(o);
      removeRows.push({ row: r, o });
      for (const c of rowChildren.get(rowKey(r)) ?? []) takeRow(c, `its parent ${r.key} is gone`);
    };
    for (const r of rows) {
      if (!backendKeys.has(r.backend_key))
        takeRow(r, `record whose backend snapshot ${r.backend_key} is gone`);
      else if (removeBackend.has(r.backend_key)) takeRow(r, `record whose data is gone (${r.backend_key})`);
    }

    if (!apply) return out;
    // A container still naming a snapshot keeps it: report, never pull it from under a task.
    const containerOf = env.db.stmt(
      "SELECT id FROM containers WHERE namespace = ? AND snapshotter = ? AND snapshot_key = ? LIMIT 1",
    );
    const keptRows = new Set<string>();
    const delRow = env.db.stmt("DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?");
    // children first
    for (const { row, o } of [...removeRows].reverse()) {
      const c = containerOf.pluck().get(row.namespace, sn.name, row.key) as string | undefined;
      const busyChild = (rowChildren.get(rowKey(row)) ?? []).some((ch) => keptRows.has(rowKey(ch)));
      if (c || busyChild) {
        o.error = c ? `in use by container ${c}` : "something stacked on it is in use";
        keptRows.add(rowKey(row));
        continue;
      }
      await attempt(o, () => void env.db.tx(() => delRow.run(row.namespace, sn.name, row.key), FREES));
    }
    const stillReferenced = new Set(
      env.db.stmt("SELECT backend_key FROM snapshots WHERE snapshotter = ?").pluck().all(sn.name) as string[],
    );
    // backend list() is parents first: remove in reverse
    for (const i of [...infos].reverse()) {
      const o = removeBackend.get(i.name);
      if (!o) continue;
      if (stillReferenced.has(i.name)) {
        o.error = "still referred to by a namespace record that is in use";
        continue;
      }
      await attempt(o, () => backend.remove(i.name));
    }
    const present = new Set(backend instanceof LocalSnapshotter ? backend.inventory().strayDirs : []);
    for (const o of out) {
      if (o.kind !== "snapshot-dir") continue;
      if (!present.has(o.object)) {
        o.removed = true;
        continue;
      }
      const busy = inUse(o.object, mounts);
      if (busy) {
        o.error = busy;
        continue;
      }
      await attempt(o, () => rm(o.object, { recursive: true, force: true }));
    }
    // Removed records leave rm-<id> directories behind (async removal): the backend's cleanup
    // takes them, unless a directory it would also take is still in use.
    if (
      backend.cleanup &&
      ![...removeBackend.values()].every((o) => !o.removed) &&
      !out.some((o) => o.kind === "snapshot-dir" && o.error)
    )
      await backend.cleanup().catch(() => {});
    if (removeRows.some((r) => r.o.removed)) env.db.mutated(true);
    return out;
  });
}

// --- bundles -------------------------------------------------------------------------------------

const dirsOf = (dir: string): string[] => {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name)
      .sort();
  } catch {
    return [];
  }
};

/** Task bundles (and work dirs) no task owns: what a crash between create and delete leaves. */
function staleBundles(env: GcEnv): Orphan[] {
  const tasks = env.tasks;
  if (!tasks) return [];
  const state = join(env.state, RUNTIME_DIR);
  const root = join(env.root, RUNTIME_DIR);
  const out: Orphan[] = [];
  for (const ns of dirsOf(state))
    for (const id of dirsOf(join(state, ns))) {
      if (id.startsWith(".")) {
        out.push(orphan("bundle", join(state, ns, id), "a bundle whose removal was interrupted"));
        continue;
      }
      if (!tasks.has(ns, id)) out.push(orphan("bundle", join(state, ns, id), `no task ${ns}/${id}`));
    }
  for (const ns of dirsOf(root))
    for (const id of dirsOf(join(root, ns))) {
      const name = id.startsWith(".") ? id.slice(1) : id;
      if (existsSync(join(state, ns, id)) || (!id.startsWith(".") && tasks.has(ns, name))) continue;
      out.push(
        orphan("work-dir", join(root, ns, id), `task work directory without a bundle (${ns}/${name})`),
      );
    }
  return out;
}

async function removeBundle(env: GcEnv, o: Orphan): Promise<void> {
  const state = join(env.state, RUNTIME_DIR);
  if (o.kind === "work-dir") {
    await rm(o.object, { recursive: true, force: true });
    return;
  }
  const [ns, id] = o.object.slice(state.length + 1).split("/") as [string, string];
  // a hidden (half-removed) bundle has no work dir of its own left to remove
  const b = bundlePaths(state, join(env.root, RUNTIME_DIR), ns, id);
  // re-check: a task created since the listing owns it now
  if (!id.startsWith(".") && env.tasks?.has(ns, id)) throw new Error(`task ${ns}/${id} exists now`);
  await deleteBundle(b);
}

// --- all of it -----------------------------------------------------------------------------------

/** Everything prune would remove (apply=false), or remove it and say how each went (apply=true). */
export async function prune(env: GcEnv, apply: boolean): Promise<Orphan[]> {
  const log = env.log ?? nopLogger;
  const out: Orphan[] = [];
  out.push(...(await contentOrphans(env, apply)));
  const mounts = readMounts();
  for (const sn of env.snapshots?.all() ?? [])
    out.push(...(await snapshotterOrphans(env, sn, apply, mounts)));
  const leaked = leakedMounts(env, mounts);
  out.push(...leaked);
  if (apply)
    for (const o of leaked)
      await attempt(o, () => {
        // the owner may have appeared since the listing (a task started): look again
        if (!leakedMounts(env).some((m) => m.object === o.object)) throw new Error("owned now");
        unmountAll(o.object, MNT_DETACH);
      });
  const bundles = staleBundles(env);
  out.push(...bundles);
  if (apply) for (const o of bundles) await attempt(o, () => removeBundle(env, o));
  if (apply)
    for (const o of out)
      if (o.removed) log.info("pruned", { kind: o.kind, object: o.object });
      else if (o.error) log.warn("could not prune", { kind: o.kind, object: o.object, error: o.error });
  return out;
}
