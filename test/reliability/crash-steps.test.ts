// Reliability group 1: crash at every step (issue 14). berthd is killed with -9 at a seeded random
// moment while one operation runs, restarted on the same root and state, and then:
//   - `berth check` (the reusable command: blobs present and hashing to their digests, snapshot
//     chains whole, no record without its file or file without its record, no leaked mounts, no
//     orphaned shims, running tasks answering) reports no error, and no warning beyond the few a
//     crash legitimately leaves (an ingest record whose data was already committed as a blob);
//   - the same, independently of the daemon: no mount under root/state that a live task or pod
//     does not own (mountsUnder), no shim (shimsOf) for a task the daemon does not list;
//   - the interrupted operation is either fully there or fully absent (an image listed has every
//     blob and, when the daemon made it, its unpack; a container listed has its snapshot; a task
//     listed answers; a pod or CRI container listed answers and owns what it should);
//   - the same operation succeeds when run again, after the leftovers are removed as an operator
//     would (`ctr leases rm --sync`, deleting what the crash left half made).
// Steps: content ingest, ctr's client-side pull, berth's daemon-side pull (parallel unpack), a
// client-side unpack (snapshot prepare/apply/commit), image delete with synchronous GC, container
// create, task create+start, exec, task delete, CRI RunPodSandbox and CreateContainer (host-network
// pods: no CNI). The kill delay is uniform in [0, the operation's duration measured once].
// BERTH_CRASH_STEPS=ingest,berth-pull limits a run to some steps.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, rmdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { NamespaceMode, PodSandboxState } from "../../src/gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { reap, setChildSubreaper } from "../../src/sys/reaper.js";
import { type CriClient, criClient, criTestConfig, pushPauseImage } from "../helpers/cri.js";
import { berth, ctr, ok, type RunResult } from "../helpers/ctr.js";
import { type Daemon, GC_OFF_CONFIG, killShimsOf, restartDaemon, startBerthd } from "../helpers/daemons.js";
import {
  type BuiltImage,
  blob,
  buildBusyboxImage,
  linuxConfigBlob,
  MediaType,
  manifestBlob,
  pushImage,
} from "../helpers/images.js";
import { descendants, shimsOf, until } from "../helpers/procs.js";
import { type Registry, startRegistry } from "../helpers/registry.js";
import { buildTar, gzip, sha256 } from "../helpers/tarbuild.js";
import { makeTempDir, mountsUnder, removeTempDir } from "../helpers/tmp.js";
import { cases, report, rng, SEED } from "./report.js";

const NS = "crash";
const K8S = "k8s.io";
const BB = "/bin/busybox";
const RUNTIME_DIR = "io.containerd.runtime.v2.task";
const CRI_DIR = "io.containerd.grpc.v1.cri";
/**
 * Warnings a crash legitimately leaves: an ingest record whose data was already renamed into its
 * blob when the daemon died, before the commit's transaction (the next ingest of that ref starts
 * it afresh, `berth gc prune` removes it, the collector after a day idle).
 */
const ALLOWED_WARNINGS = new Set<string>(["orphan-ingest-record"]);

type StepName =
  | "ingest"
  | "ctr-pull"
  | "berth-pull"
  | "unpack"
  | "image-rm"
  | "container-create"
  | "task-start"
  | "task-exec"
  | "task-delete"
  | "cri-runp"
  | "cri-create";
const ALL_STEPS: StepName[] = [
  "ingest",
  "ctr-pull",
  "berth-pull",
  "unpack",
  "image-rm",
  "container-create",
  "task-start",
  "task-exec",
  "task-delete",
  "cri-runp",
  "cri-create",
];
const STEPS = process.env.BERTH_CRASH_STEPS
  ? ALL_STEPS.filter((s) => process.env.BERTH_CRASH_STEPS!.split(",").includes(s))
  : ALL_STEPS;

/** The chain ID of each layer prefix (the names unpacked snapshots carry). */
function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    const prev = out[out.length - 1];
    out.push(prev ? `sha256:${createHash("sha256").update(`${prev} ${d}`).digest("hex")}` : d);
  }
  return out;
}

/** A 4-layer image: busybox and three layers of seeded random data (~2 MiB each, incompressible). */
function bigImage(): BuiltImage {
  const base = buildBusyboxImage().platforms[0]!;
  const r = rng(SEED ^ 0x5eed);
  const tars = [0, 1, 2].map((i) => {
    const data = Buffer.alloc(2 << 20);
    for (let j = 0; j < data.length; j += 4) data.writeUInt32LE(Math.floor(r() * 2 ** 32), j);
    return buildTar([{ name: `data${i}.bin`, data, mtime: 1700000000 }]);
  });
  const layers = [base.layers[0]!, ...tars.map((t) => blob(MediaType.layerGzip, gzip(t)))];
  const diffIds = [base.diffIds[0]!, ...tars.map((t) => sha256(t))];
  const config = linuxConfigBlob(diffIds, {
    Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    Cmd: ["sh"],
  });
  const manifest = manifestBlob(config, layers);
  const platform = { os: "linux", architecture: "amd64" };
  return {
    target: manifest,
    platforms: [{ platform, manifest, config, layers, diffIds }],
    blobs: [...layers, config, manifest],
  };
}

const firstColumn = (out: string) =>
  out
    .trim()
    .split("\n")
    .slice(1)
    .map((l) => l.trim().split(/\s+/)[0]!)
    .filter(Boolean);

describe("reliability: crash at every step", { timeout: 3_600_000 }, () => {
  let tmp: string;
  let reg: Registry;
  let d: Daemon;
  let cri: CriClient;
  const crashed: Daemon[] = [];
  let big: BuiltImage;
  let bigRef: string;
  let bigChain: string[];
  let pauseRef: string;
  let busyboxRef: string;
  const perStep = cases(1, 50);
  const counts = new Map<StepName, number>();
  const typical = new Map<StepName, number>();
  const failed: string[] = [];
  const notes: string[] = [];
  let orphans: number[] = [];
  let tried = 0;

  const c = (args: string[], opts: { ns?: string; timeoutMs?: number; input?: { file: string } } = {}) =>
    ctr(d.address, args, {
      namespace: opts.ns ?? NS,
      timeoutMs: opts.timeoutMs ?? 120_000,
      input: opts.input,
    });

  const reapOrphans = () => {
    orphans = orphans.filter((pid) => {
      try {
        return reap(pid) === "running";
      } catch {
        return false;
      }
    });
  };

  /** kill -9 berthd (its shims become this process's children: reaped here later). */
  async function crash(): Promise<void> {
    for (const s of shimsOf(d.address)) orphans.push(s.pid, ...descendants(s.pid).map((p) => p.pid));
    crashed.push(d);
    await d.kill9();
  }

  async function restart(): Promise<void> {
    cri?.close();
    for (let attempt = 0; ; attempt++) {
      try {
        d = await restartDaemon(crashed[crashed.length - 1]!, { timeoutMs: 60_000 });
        break;
      } catch (err) {
        // other sessions rebuild dist/ in this tree: a start caught between two emitted files
        // fails to link; nothing of the daemon's own start-up
        if (attempt >= 5 || !/SyntaxError|does not provide an export/.test((err as Error).message)) throw err;
        notes.push("a restart hit a half-rebuilt dist/ (another session's tsc) and was retried");
        await sleep(5000);
      }
    }
    cri = criClient(d.address);
  }

  /** Every lease in a namespace removed with a synchronous collection, as an operator would. */
  async function dropLeases(ns = NS): Promise<string[]> {
    const ids = firstColumn(ok(await c(["leases", "ls"], { ns }), "leases ls"));
    if (ids.length > 0) ok(await c(["leases", "rm", "--sync", ...ids], { ns }), "leases rm");
    return ids;
  }

  const listed = async (args: string[], ns = NS) => firstColumn(ok(await c(args, { ns }), args.join(" ")));
  const contentDigests = async (ns = NS) => new Set(await listed(["content", "ls"], ns));
  const snapshotExists = async (key: string, ns = NS) =>
    (await c(["snapshots", "info", key], { ns })).code === 0;
  const imageListed = async (ref: string) => (await listed(["images", "ls"])).includes(ref);

  /** Tasks the daemon lists, by namespace: id → status. */
  async function tasks(ns: string): Promise<Map<string, string>> {
    const out = ok(await c(["tasks", "ls"], { ns }), "tasks ls");
    const m = new Map<string, string>();
    for (const l of out.trim().split("\n").slice(1)) {
      const f = l.trim().split(/\s+/);
      if (f[0]) m.set(f[0], f[2] ?? "");
    }
    return m;
  }

  /** The daemon-wide checks after a restart: `berth check` (hashing blobs), mounts, shims, tasks. */
  async function consistency(hash = true): Promise<void> {
    const r = await berth(d.address, ["check", ...(hash ? [] : ["--quick"])], { timeoutMs: 120_000 });
    const problems = r.stdout
      .split("\n")
      .filter((l) => /^(error|warning): /.test(l))
      .filter((l) => !ALLOWED_WARNINGS.has(l.split(" ")[1]!));
    assert.equal(r.code === 0 && problems.length === 0, true, `berth check: ${r.stdout}${r.stderr}`);
    const byNs = new Map([
      [NS, await tasks(NS)],
      [K8S, await tasks(K8S)],
    ]);
    for (const [ns, ts] of byNs)
      for (const [id, status] of ts) assert.notEqual(status, "UNKNOWN", `task ${ns}/${id} does not answer`);
    // shims: each one serves a task the daemon lists
    await sleep(50);
    for (const s of shimsOf(d.address)) {
      const arg = (f: string) => s.argv[s.argv.indexOf(f) + 1] ?? "";
      if (s.argv.includes("delete") || s.argv.includes("start")) continue;
      assert.ok(
        byNs.get(arg("-namespace"))?.has(arg("-id")),
        `orphaned shim ${s.pid} for ${arg("-namespace")}/${arg("-id")}`,
      );
    }
    // mounts: under the runtime's state only for listed tasks; the CRI's own (shm) for its pods
    const runtimeState = path.join(d.state, RUNTIME_DIR);
    const pods = (await cri.runtime.listPodSandbox({})).items.map((p) => p.id);
    for (const mp of [...mountsUnder(d.root), ...mountsUnder(d.state)]) {
      if (
        mp.startsWith(`${path.join(d.state, CRI_DIR)}/`) ||
        mp.startsWith(`${path.join(d.root, CRI_DIR)}/`)
      ) {
        if (pods.some((id) => mp.includes(`/${id}/`) || mp.endsWith(`/${id}`))) continue;
        assert.fail(`leaked CRI mount ${mp}`);
      }
      if (mp.startsWith(`${runtimeState}/`)) {
        const [ns, id] = mp.slice(runtimeState.length + 1).split("/");
        if (ns && id && byNs.get(ns)?.has(id)) continue;
      }
      assert.fail(`leaked mount ${mp}`);
    }
  }

  /** An image is fully there: every blob, and (unless `unpacked` is false) its top snapshot. */
  async function imageWhole(unpacked = true): Promise<void> {
    const have = await contentDigests();
    for (const b of big.blobs) assert.ok(have.has(b.digest), `image listed without blob ${b.digest}`);
    if (unpacked)
      assert.ok(await snapshotExists(bigChain[bigChain.length - 1]!), "image listed without its unpack");
  }

  /** No image, and after a sync collection none of its blobs or snapshots. */
  async function imageGone(): Promise<void> {
    if (await imageListed(bigRef)) ok(await c(["images", "rm", "--sync", bigRef]), "images rm");
    await dropLeases();
    ok(await berth(d.address, ["--namespace", NS, "gc"]), "berth gc");
    const have = await contentDigests();
    for (const b of big.blobs) assert.ok(!have.has(b.digest), `blob ${b.digest} left after rm --sync`);
    for (const id of bigChain) assert.ok(!(await snapshotExists(id)), `snapshot ${id} left after rm --sync`);
  }

  const pullCtr = () => c(["images", "pull", "--plain-http", bigRef]);
  const pullBerth = () =>
    berth(d.address, ["images", "pull", "--plain-http", bigRef], { namespace: NS, timeoutMs: 120_000 });

  /** A redo of a pull: a first pull after a crash failing with this is the known lease hole. */
  async function redoPull(pull: () => Promise<RunResult>, what: string): Promise<void> {
    await dropLeases();
    const r = await pull();
    if (r.code !== 0 && /content digest sha256:[0-9a-f]+: not found/.test(r.stderr)) {
      notes.push(
        `known (being fixed by "defects"): first pull after a crash: ${r.stderr.trim().split("\n").pop()}`,
      );
      ok(await pull(), `${what} (second try)`);
    } else ok(r, `${what} again`);
    assert.ok(await imageListed(bigRef));
    await imageWhole();
  }

  async function ensureImage(): Promise<void> {
    if (!(await imageListed(bigRef)) || !(await snapshotExists(bigChain[bigChain.length - 1]!)))
      ok(await pullCtr(), "pull");
  }

  const containerListed = async (id: string) => (await listed(["containers", "ls"])).includes(id);

  async function removeContainer(id: string): Promise<void> {
    const ts = await tasks(NS);
    if (ts.has(id)) {
      await c(["tasks", "kill", "-s", "SIGKILL", id]);
      ok(await c(["tasks", "delete", "-f", id]), `tasks delete ${id}`);
    }
    if (await containerListed(id)) ok(await c(["containers", "rm", id]), `containers rm ${id}`);
  }

  async function waitStatus(id: string, want: string): Promise<void> {
    for (let i = 0; ; i++) {
      if ((await tasks(NS)).get(id) === want) return;
      if (i > 100) assert.fail(`task ${id} never ${want}`);
      await sleep(100);
    }
  }

  // --- CRI ---------------------------------------------------------------------------------------
  const podConfig = (name: string) => ({
    metadata: { name, namespace: "crash", uid: `uid-${name}`, attempt: 0 },
    hostname: "",
    logDirectory: path.join(tmp, "logs", name),
    labels: { crash: "1" },
    linux: {
      securityContext: { namespaceOptions: { network: NamespaceMode.NODE, ipc: NamespaceMode.NODE } },
    },
  });
  const containerConfig = (name: string) => ({
    metadata: { name, attempt: 0 },
    image: { image: busyboxRef },
    command: [BB, "sleep", "1000"],
    logPath: `${name}.log`,
    linux: { securityContext: { namespaceOptions: { pid: NamespaceMode.CONTAINER } } },
  });
  const podsNamed = async (name: string) =>
    (await cri.runtime.listPodSandbox({})).items.filter((p) => p.metadata?.name === name);

  async function removePods(name: string): Promise<void> {
    for (const p of await podsNamed(name)) {
      await cri.runtime.stopPodSandbox({ podSandboxId: p.id });
      await cri.runtime.removePodSandbox({ podSandboxId: p.id });
    }
  }

  /** Every containerd container in k8s.io is a pod or a CRI container the CRI lists, and answers. */
  async function criWhole(): Promise<void> {
    const pods = (await cri.runtime.listPodSandbox({})).items;
    const ctrs = (await cri.runtime.listContainers({})).containers;
    const known = new Set([...pods.map((p) => p.id), ...ctrs.map((x) => x.id)]);
    for (const id of await listed(["containers", "ls"], K8S))
      assert.ok(known.has(id), `containerd container ${id} in k8s.io that the CRI does not list`);
    for (const p of pods) {
      const s = await cri.runtime.podSandboxStatus({ podSandboxId: p.id });
      if (s.status?.state === PodSandboxState.SANDBOX_READY)
        assert.equal((await tasks(K8S)).get(p.id), "RUNNING", `ready pod ${p.id} without a running task`);
    }
    for (const x of ctrs) {
      await cri.runtime.containerStatus({ containerId: x.id });
      assert.ok(await snapshotExists(x.id, K8S), `CRI container ${x.id} without its snapshot`);
    }
  }

  // --- steps ---------------------------------------------------------------------------------------
  interface Step {
    /** Brings the preconditions about. */
    prepare(k: number): Promise<void>;
    /** The operation; it may fail when the daemon dies under it. */
    op(k: number): Promise<unknown>;
    /** After the restart: fully there or fully absent. */
    verify(k: number): Promise<void>;
    /** Leftovers removed as an operator would, the operation run again: it succeeds. */
    redo(k: number): Promise<void>;
    cleanup(k: number): Promise<void>;
  }

  const ingestFile = (k: number) => path.join(tmp, `ingest-${k}.bin`);
  const ingestDigest = new Map<number, string>();
  const cid = (k: number) => `crash-c${k}`;

  const steps: Record<StepName, Step> = {
    ingest: {
      prepare: async (k) => {
        const r = rng(SEED + 7919 * k);
        const data = Buffer.alloc(4 << 20);
        for (let j = 0; j < data.length; j += 4) data.writeUInt32LE(Math.floor(r() * 2 ** 32), j);
        writeFileSync(ingestFile(k), data);
        ingestDigest.set(k, sha256(data));
      },
      op: (k) =>
        c(
          [
            "content",
            "ingest",
            "--expected-digest",
            ingestDigest.get(k)!,
            "--expected-size",
            String(4 << 20),
            `crash-ingest-${k}`,
          ],
          { input: { file: ingestFile(k) } },
        ),
      verify: async () => {
        // listed: `berth check` has hashed it
      },
      redo: async (k) => {
        // there already or not, the same ingest succeeds (resuming what the crash left)
        ok((await steps.ingest.op(k)) as RunResult, "content ingest again");
        assert.ok((await contentDigests()).has(ingestDigest.get(k)!), "ingested blob not listed");
        assert.deepEqual(await listed(["content", "active"]), [], "ingest left active after its commit");
      },
      cleanup: async (k) => {
        ok(await c(["content", "rm", ingestDigest.get(k)!]), "content rm");
      },
    },
    "ctr-pull": {
      prepare: () => imageGone(),
      op: () => pullCtr(),
      verify: async () => {
        // ctr creates the image record before it unpacks (as with containerd): blobs only
        if (await imageListed(bigRef)) await imageWhole(false);
      },
      redo: () => redoPull(pullCtr, "ctr images pull"),
      cleanup: async () => {},
    },
    "berth-pull": {
      prepare: () => imageGone(),
      op: () => pullBerth(),
      verify: async () => {
        // the daemon records the image once its unpack is done
        if (await imageListed(bigRef)) await imageWhole(true);
      },
      redo: () => redoPull(pullBerth, "berth images pull"),
      cleanup: async () => {},
    },
    unpack: {
      prepare: async () => {
        await ensureImage();
        for (const id of [...bigChain].reverse()) {
          if (!(await snapshotExists(id))) continue;
          const r = await c(["snapshots", "rm", id]);
          // once the top goes its parents are unreferenced: a periodic collection may take them
          if (r.code !== 0 && (await snapshotExists(id))) ok(r, `snapshots rm ${id}`);
        }
      },
      op: () => c(["snapshots", "unpack", big.target.digest]),
      verify: async () => {
        // each committed layer has its parent (`berth check` too); no half-applied committed layer
        for (let i = 1; i < bigChain.length; i++)
          if (await snapshotExists(bigChain[i]!))
            assert.ok(await snapshotExists(bigChain[i - 1]!), `snapshot ${i} without its parent`);
      },
      redo: async () => {
        await dropLeases();
        ok(await c(["snapshots", "unpack", big.target.digest]), "snapshots unpack again");
        for (const id of bigChain) assert.ok(await snapshotExists(id), `snapshot ${id} after unpack`);
        const active = ok(await c(["snapshots", "ls"]), "snapshots ls")
          .split("\n")
          .filter((l) => /\bActive\b/.test(l));
        assert.deepEqual(active, [], "active snapshots left after the unpack");
      },
      cleanup: async () => {},
    },
    "image-rm": {
      prepare: () => ensureImage(),
      op: () => c(["images", "rm", "--sync", bigRef]),
      verify: async () => {
        if (await imageListed(bigRef)) await imageWhole(true);
      },
      redo: () => imageGone(),
      cleanup: async () => {},
    },
    "container-create": {
      prepare: () => ensureImage(),
      op: (k) => c(["containers", "create", bigRef, cid(k), "sh"]),
      verify: async (k) => {
        if (await containerListed(cid(k)))
          assert.ok(await snapshotExists(cid(k)), `container ${cid(k)} without its snapshot`);
      },
      redo: async (k) => {
        await removeContainer(cid(k));
        await dropLeases();
        ok(await c(["containers", "create", bigRef, cid(k), "sh"]), "containers create again");
        assert.ok(await snapshotExists(cid(k)));
      },
      cleanup: (k) => removeContainer(cid(k)),
    },
    "task-start": {
      prepare: async (k) => {
        await ensureImage();
        ok(await c(["containers", "create", bigRef, cid(k), BB, "sleep", "1000"]), "containers create");
      },
      op: (k) => c(["tasks", "start", "-d", cid(k)]),
      verify: async () => {
        // a listed task answers (consistency), CREATED or RUNNING
      },
      redo: async (k) => {
        if ((await tasks(NS)).has(cid(k))) {
          await c(["tasks", "kill", "-s", "SIGKILL", cid(k)]);
          ok(await c(["tasks", "delete", "-f", cid(k)]), "tasks delete");
        }
        ok(await c(["tasks", "start", "-d", cid(k)]), "tasks start again");
        await waitStatus(cid(k), "RUNNING");
      },
      cleanup: (k) => removeContainer(cid(k)),
    },
    "task-exec": {
      prepare: async (k) => {
        await steps["task-start"].prepare(k);
        ok(await c(["tasks", "start", "-d", cid(k)]), "tasks start");
      },
      op: (k) => c(["tasks", "exec", "--exec-id", `e${k}`, cid(k), BB, "sh", "-c", "echo x; sleep 0.2"]),
      verify: async (k) => {
        assert.equal((await tasks(NS)).get(cid(k)), "RUNNING", "the exec's task stopped");
      },
      redo: async (k) => {
        // an exec cut short keeps its id in the shim until deleted: a new id, as a client would
        const r = ok(await c(["tasks", "exec", "--exec-id", `e${k}b`, cid(k), BB, "echo", "again"]), "exec");
        assert.equal(r, "again\n");
      },
      cleanup: (k) => removeContainer(cid(k)),
    },
    "task-delete": {
      prepare: async (k) => {
        await steps["task-exec"].prepare(k);
        ok(await c(["tasks", "kill", "-s", "SIGKILL", cid(k)]), "tasks kill");
        await waitStatus(cid(k), "STOPPED");
      },
      op: (k) => c(["tasks", "delete", cid(k)]),
      verify: async (k) => {
        const ts = await tasks(NS);
        if (ts.has(cid(k))) assert.equal(ts.get(cid(k)), "STOPPED");
        else
          assert.deepEqual(
            shimsOf(d.address).filter((s) => s.argv.includes(cid(k))),
            [],
            "deleted task's shim",
          );
      },
      redo: async (k) => {
        if ((await tasks(NS)).has(cid(k))) ok(await c(["tasks", "delete", cid(k)]), "tasks delete again");
        assert.ok(!(await tasks(NS)).has(cid(k)));
        // the container runs again
        ok(await c(["tasks", "start", "-d", cid(k)]), "tasks start after delete");
        await waitStatus(cid(k), "RUNNING");
      },
      cleanup: (k) => removeContainer(cid(k)),
    },
    "cri-runp": {
      prepare: async () => {},
      op: (k) => cri.runtime.runPodSandbox({ config: podConfig(`runp${k}`) }),
      verify: () => criWhole(),
      redo: async (k) => {
        await removePods(`runp${k}`);
        await dropLeases(K8S);
        const { podSandboxId } = await cri.runtime.runPodSandbox({ config: podConfig(`runp${k}`) });
        const s = await cri.runtime.podSandboxStatus({ podSandboxId });
        assert.equal(s.status?.state, PodSandboxState.SANDBOX_READY);
        await criWhole();
      },
      cleanup: (k) => removePods(`runp${k}`),
    },
    "cri-create": {
      prepare: async (k) => {
        await cri.runtime.runPodSandbox({ config: podConfig(`cpod${k}`) });
      },
      op: async (k) => {
        const [pod] = await podsNamed(`cpod${k}`);
        return cri.runtime.createContainer({
          podSandboxId: pod!.id,
          config: containerConfig(`c${k}`),
          sandboxConfig: podConfig(`cpod${k}`),
        });
      },
      verify: () => criWhole(),
      redo: async (k) => {
        for (const x of (await cri.runtime.listContainers({})).containers)
          if (x.metadata?.name === `c${k}`) await cri.runtime.removeContainer({ containerId: x.id });
        await dropLeases(K8S);
        let [pod] = await podsNamed(`cpod${k}`);
        const ps = pod && (await cri.runtime.podSandboxStatus({ podSandboxId: pod.id }));
        if (ps?.status?.state !== PodSandboxState.SANDBOX_READY) {
          // the pod did not survive as ready (its task was being set up): a kubelet makes it again
          await removePods(`cpod${k}`);
          await cri.runtime.runPodSandbox({ config: podConfig(`cpod${k}`) });
          [pod] = await podsNamed(`cpod${k}`);
        }
        const { containerId } = await cri.runtime.createContainer({
          podSandboxId: pod!.id,
          config: containerConfig(`c${k}`),
          sandboxConfig: podConfig(`cpod${k}`),
        });
        await cri.runtime.startContainer({ containerId });
        await criWhole();
      },
      cleanup: (k) => removePods(`cpod${k}`),
    },
  };

  before(async () => {
    setChildSubreaper(true);
    tmp = await makeTempDir("crash-steps");
    reg = await startRegistry();
    big = bigImage();
    bigChain = chainIds(big.platforms[0]!.diffIds);
    await pushImage(reg.url, "test/big", "1", big);
    await pushImage(reg.url, "test/busybox", "1", buildBusyboxImage());
    await pushPauseImage(reg.url);
    bigRef = `${reg.host}/test/big:1`;
    busyboxRef = `${reg.host}/test/busybox:1`;
    pauseRef = `${reg.host}/test/pause:1`;
    const confDir = path.join(tmp, "net.d");
    mkdirSync(confDir, { recursive: true });
    const config = criTestConfig({ registryHost: reg.host, confDir, head: [GC_OFF_CONFIG] });
    d = await startBerthd({ config, root: path.join(tmp, "root"), state: path.join(tmp, "state") });
    cri = criClient(d.address);
    await cri.image.pullImage({ image: { image: busyboxRef } });
    await cri.image.pullImage({ image: { image: pauseRef } });
  });

  after(async () => {
    try {
      for (const p of (await cri.runtime.listPodSandbox({})).items)
        await cri.runtime.removePodSandbox({ podSandboxId: p.id }).catch(() => {});
    } catch {
      // the daemon is gone
    }
    cri?.close();
    if (d) {
      for (const id of await listed(["containers", "ls"]).catch(() => [] as string[]))
        await removeContainer(id).catch(() => {});
      killShimsOf(d.address);
      await d.cleanup();
    }
    for (const x of crashed) await x.cleanup();
    await sleep(100);
    reapOrphans();
    try {
      rmdirSync(`/run/containerd/runc/${NS}`); // runc's state dir for the namespace, once empty
    } catch {
      // not empty, or never made
    }
    await reg?.cleanup();
    if (tmp) await removeTempDir(tmp);
    report({
      group: "crash-steps",
      cases: tried,
      failures: failed.length,
      checked:
        `kill -9 at a random moment in ${STEPS.length} steps (${STEPS.map((s) => `${s} ${counts.get(s) ?? 0}`).join(", ")}): ` +
        "berth check clean, no leaked mounts or orphaned shims, operation all-or-nothing, rerun succeeds",
      notes: [
        "fixed: berth check called a blob without a record (a crash between the blob's rename and its row) a warning, though the next collection's sweep removes it: now information, as collectable",
        "fixed: a snapshot removal cut short by the crash (its rm-<id> directory) was reported as an orphan-snapshot-dir warning and stayed until a collection: removed at start-up, not counted as debris",
        ...new Set(notes),
        ...failed,
      ],
    });
  });

  // Crash states the random cases found, made on purpose (kept as regression cases).
  describe("regressions", () => {
    it("a removed snapshot's rm-<id> directory and a blob without its record after a crash", async () => {
      const snaps = path.join(d.root, "io.containerd.snapshotter.v1.overlayfs", "snapshots");
      const rmDir = path.join(snaps, "rm-999999");
      mkdirSync(path.join(rmDir, "fs"), { recursive: true });
      writeFileSync(path.join(rmDir, "fs", "junk"), "junk");
      const data = Buffer.from(`a blob whose record the crash lost ${SEED}\n`);
      const dgst = sha256(data);
      const blobFile = path.join(d.root, "io.containerd.content.v1.content", "blobs", ...dgst.split(":"));
      writeFileSync(blobFile, data);
      await crash();
      await restart();
      // the removal a crash cut short finishes at the start (it used to stay for ever, a warning)
      await until("rm-<id> removed at start-up", () => !existsSync(rmDir), 10_000);
      // the next collection's sweep takes the blob: information, not a warning
      const r = ok(await berth(d.address, ["check", "--strict"]), "check --strict");
      assert.match(r, new RegExp(`^info: orphan-blob ${blobFile}:`, "m"));
      ok(await berth(d.address, ["--namespace", NS, "gc"]), "berth gc");
      assert.equal(existsSync(blobFile), false, "the sweep removed the blob");
      await consistency();
    });
  });

  for (const name of STEPS) {
    describe(name, () => {
      const step = steps[name];
      it("measures the operation once (no crash)", async () => {
        const k = 1000;
        await step.prepare(k);
        const t0 = Date.now();
        const r = await step.op(k);
        if (r && typeof r === "object" && "code" in r) ok(r as RunResult, `${name} (measure)`);
        typical.set(name, Math.max(20, Date.now() - t0));
        await step.verify(k);
        await step.cleanup(k);
      });
      for (let k = 0; k < perStep; k++) {
        it(`case ${k}`, async () => {
          tried++;
          counts.set(name, (counts.get(name) ?? 0) + 1);
          const r = rng(SEED + ALL_STEPS.indexOf(name) * 1000 + k);
          const delay = Math.floor(r() * (typical.get(name) ?? 500));
          try {
            await step.prepare(k);
            const pending = Promise.resolve()
              .then(() => step.op(k))
              .then(
                (v) => ({ ok: true, v }),
                (e: Error) => ({ ok: false, v: e.message }),
              );
            await sleep(delay);
            await crash();
            // a client may wait to reconnect (ctr does): it then goes on with the new daemon,
            // and is done before anything is checked
            await Promise.race([pending, sleep(3000)]);
            await restart();
            await pending;
            await consistency();
            await step.verify(k);
            await step.redo(k);
            await consistency(false);
            await step.cleanup(k);
            reapOrphans();
          } catch (err) {
            failed.push(
              `${name} case ${k} (seed ${SEED + ALL_STEPS.indexOf(name) * 1000 + k}, kill at ${delay} ms): ${(err as Error).message.split("\n")[0]}`,
            );
            throw err;
          }
        });
      }
    });
  }
});
