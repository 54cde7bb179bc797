// The runtime v2 task manager (plugin io.containerd.runtime.v2 "task"), and the entry point of the
// in-process Task API (task.ts): a bundle per task under `<state>/<ns>/<id>`, one shim per task or
// per group of tasks (see create), reconnection to live shims after a restart, and the clean-up
// containerd does when a shim dies under it (run the shim's `delete`, publish /tasks/exit and
// /tasks/delete). Task events proper come from the shims themselves, forwarded over berthd's ttrpc
// socket (events.ts); the manager reads the exits back from the exchange for onExit.
//
// berthd is a child subreaper: the shims daemonize and are reparented here, so their PIDs are
// reaped here too (after each shutdown and on a timer), as no init on these machines reaps.
import { EventEmitter } from "node:events";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { BerthError, errAlreadyExists, errNotFound, isNotFound } from "../../base/errdefs.js";
import type { Logger } from "../../base/log.js";
import { TaskDeleteSchema, TaskExitSchema } from "../../gen/containerd/events/task_pb.js";
import { hasExitedChild, reap } from "../../sys/reaper.js";
import { spawnsInFlight } from "../../sys/spawn.js";
import type { Exchange } from "../events/exchange.js";
import { packEvent } from "../events/exchange.js";
import { type Bundle, bundlePaths, deleteBundle, newBundle } from "./bundle.js";
import { TASK_EXIT_TOPIC, taskExitOf } from "./events.js";
import { exitStatusOf, ShimTask, specBytes } from "./process.js";
import {
  deleteDeadShim,
  findShimBinary,
  openShimLog,
  ShimConnection,
  type ShimEnv,
  shimAddressOf,
  startShim,
} from "./shim.js";
import { GROUPING_RUNTIME, shimGroupOf } from "./shim-group.js";
import { removeDeadShimSocket } from "./shim-launch.js";
import type { CreateTaskOptions, ExitInfo, Task, TaskExitEvent } from "./task.js";

export * from "./task.js";

/** The runtime a task gets when CreateTaskOptions.runtime is not set. */
export const DEFAULT_RUNTIME = "io.containerd.runc.v2";

const key = (ns: string, id: string) => `${ns}/${id}`;
/** A shim group: the runc v2 shim derives its socket from the namespace and the group's id. */
const groupKey = (ns: string, group: string) => `${ns}/${group}`;
/** Shims reconnected to at once when berthd starts (loadExisting). */
const LOAD_CONCURRENCY = 8;

/**
 * How long the manager waits on shims, in ms (0: no bound). The first three are containerd's
 * `[timeouts]` of the same names; `call` is berth's bound on every shim call but Wait and Create
 * (containerd has none: a stopped shim holds its callers until their own deadline, if any).
 */
export interface ShimTimeouts {
  /** Reconnecting to a shim at start-up (`io.containerd.timeout.shim.load`). */
  load: number;
  /** Running a dead shim's `delete` (`io.containerd.timeout.shim.cleanup`). */
  cleanup: number;
  /** Waiting for a shim to go after Shutdown (`io.containerd.timeout.shim.shutdown`). */
  shutdown: number;
  /** Each call to a running shim (`berth.timeout.shim.call`). */
  call: number;
}

export const DEFAULT_SHIM_TIMEOUTS: ShimTimeouts = {
  load: 5000,
  cleanup: 5000,
  shutdown: 3000,
  call: 30_000,
};

/**
 * This process's children by PID, from each thread's `children` list (an orphan is reparented to
 * one of the subreaper's threads); the whole of /proc only where the kernel lacks those lists.
 * Reading a dozen short files each second instead of every process's stat keeps the reaper cheap
 * on busy machines.
 */
function childPids(): string[] | undefined {
  try {
    const out: string[] = [];
    for (const tid of readdirSync("/proc/self/task")) {
      let list: string;
      try {
        list = readFileSync(`/proc/self/task/${tid}/children`, "utf8");
      } catch (err) {
        // a thread that ended meanwhile is skipped; no list for the main thread means no lists at all
        if ((err as NodeJS.ErrnoException).code === "ENOENT" && tid !== String(process.pid)) continue;
        throw err;
      }
      for (const p of list.split(/\s+/)) if (p !== "") out.push(p);
    }
    return out;
  } catch {
    try {
      return readdirSync("/proc");
    } catch {
      return undefined;
    }
  }
}

/** Whether `pid` runs a containerd-shim binary (false once it is gone or is a zombie). */
function isShimProcess(pid: number): boolean {
  try {
    const argv0 = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0] ?? "";
    return basename(argv0).startsWith("containerd-shim");
  } catch {
    return false;
  }
}

/**
 * SIGKILL the shim `pid` that nothing can stop otherwise, if it still runs a containerd-shim (not
 * a reused PID); says why in the log.
 */
function killStrayShim(log: Logger, pid: number, why: string, fields: Record<string, unknown>): void {
  if (pid <= 0 || !isShimProcess(pid)) return;
  try {
    process.kill(pid, "SIGKILL");
    log.warn(`${why}; killed it`, { ...fields, pid });
  } catch {
    // gone meanwhile
  }
}

/**
 * The tasks of all namespaces and the shims that run them.
 *
 * Shim groups: a task whose spec carries the annotation `io.kubernetes.cri.sandbox-id` (or
 * `io.containerd.runc.v2.group`) runs in the shim of that group — the CRI's one shim per pod — as
 * containerd-shim-runc-v2 answers `start` with the address of the group's running shim. Tasks on one
 * address share one connection; the shim is stopped when the last of them is deleted (or when its
 * first task's create fails and no other task uses it).
 */
export class TaskManager {
  private readonly tasks = new Map<string, ShimTask>();
  private readonly creating = new Set<string>();
  private readonly deleting = new Set<string>();
  /** Shims by ttrpc address, as promises while connecting so that tasks of a group share one. */
  private readonly shims = new Map<string, Promise<ShimConnection>>();
  /** The open connections by address (what close() closes). */
  private readonly live = new Map<string, ShimConnection>();
  /** The running shim of each group (see groupKey) by the address its `start` answered. */
  private readonly groups = new Map<string, string>();
  /** Shim PIDs to reap once they exit. */
  private readonly shimPids = new Set<number>();
  /** Other zombie children by PID: their start time and when first seen (see reapShims). */
  private lingering = new Map<number, { start: string; since: number }>();
  private readonly exits = new EventEmitter();
  private readonly stopWatching = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  /** Set at shutdown: shims outlive berthd, so closing their connections is not their death. */
  private closing = false;

  constructor(
    private readonly stateDir: string,
    private readonly rootDir: string,
    private readonly env: ShimEnv,
    private readonly events: Exchange,
    private readonly log: Logger,
    private readonly timeouts: ShimTimeouts = DEFAULT_SHIM_TIMEOUTS,
  ) {
    this.exits.setMaxListeners(0);
    void this.watchExits();
  }

  /**
   * Call `listener` for every process exit (init and exec'd) in any namespace, as the shims report
   * them, and for tasks whose shim died. Returns the function that unsubscribes. A listener that
   * throws is logged, not propagated.
   */
  onExit(listener: (e: TaskExitEvent) => void): () => void {
    const wrapped = (e: TaskExitEvent) => {
      try {
        listener(e);
      } catch (err) {
        this.log.error("task exit listener failed", { id: e.id, error: String(err) });
      }
    };
    this.exits.on("exit", wrapped);
    return () => this.exits.off("exit", wrapped);
  }

  private async watchExits(): Promise<void> {
    const sub = this.events.subscribe(
      [`topic==${JSON.stringify(TASK_EXIT_TOPIC)}`],
      this.stopWatching.signal,
    );
    for await (const env of sub) {
      let e: TaskExitEvent | undefined;
      try {
        e = taskExitOf(env);
      } catch (err) {
        this.log.warn("undecodable task exit event", { error: String(err) });
      }
      if (e) this.exits.emit("exit", e);
    }
  }

  /** Start the periodic reaper. */
  startReaper(intervalMs = 1000): void {
    this.timer = setInterval(() => this.reapShims(), intervalMs);
    this.timer.unref();
  }

  /** Collect exited shims (by PID) and any other shim/runc zombie reparented here. */
  reapShims(): void {
    // With hundreds of shims, a waitpid for each and a read of each child's stat took ~12 ms every
    // second (most of an idle berthd's CPU at 500 pods, against containerd's whole 10 ms/s).
    // One waitid that collects nothing says whether any of that is needed.
    try {
      if (!hasExitedChild()) {
        this.lingering.clear();
        return;
      }
    } catch {
      // the scan below finds whatever waitid could not say
    }
    for (const pid of this.shimPids) {
      try {
        if (reap(pid) !== "running") this.shimPids.delete(pid);
      } catch {
        this.shimPids.delete(pid);
      }
    }
    // orphans this process never spawned through Node (their starter exited): zombies whose
    // parent is berthd and whose command is a shim or runc. Any other zombie is a container's
    // process reparented here when its shim died (killed, OOM): reaped once it has stayed a zombie
    // for a second, which a child Node spawned itself never does (libuv reaps those at once).
    // a child being spawned on a pool thread is not in env.spawned yet: leave zombies for the next
    // round rather than take the status its runner waits for
    if (spawnsInFlight() > 0) return;
    const names = childPids();
    if (names === undefined) return;
    const now = Date.now();
    const lingering = new Map<number, { start: string; since: number }>();
    for (const name of names) {
      if (!/^\d+$/.test(name)) continue;
      const pid = Number(name);
      if (this.env.spawned.has(pid)) continue;
      let stat: string;
      try {
        stat = readFileSync(`/proc/${name}/stat`, "utf8");
      } catch {
        continue;
      }
      const close = stat.lastIndexOf(")");
      const comm = stat.slice(stat.indexOf("(") + 1, close);
      const fields = stat.slice(close + 2).split(" ");
      const [state, ppid] = fields;
      if (state !== "Z" || Number(ppid) !== process.pid) continue;
      if (!comm.startsWith("containerd-shim") && !comm.startsWith("runc")) {
        const start = fields[19] ?? "";
        const seen = this.lingering.get(pid);
        const since = seen && seen.start === start ? seen.since : now;
        if (now - since < 1000) {
          lingering.set(pid, { start, since });
          continue;
        }
      }
      if (this.env.spawned.has(pid)) continue;
      try {
        reap(pid);
      } catch {
        // gone meanwhile
      }
    }
    this.lingering = lingering;
  }

  /** Stop (berthd shutdown): close the shim connections; the shims and their tasks keep running. */
  async close(): Promise<void> {
    this.closing = true;
    this.stopWatching.abort();
    if (this.timer) clearInterval(this.timer);
    for (const s of this.live.values()) s.close();
    this.live.clear();
    this.shims.clear();
    this.tasks.clear();
  }

  /** Whether the task exists or is being created. */
  has(ns: string, id: string): boolean {
    return this.tasks.has(key(ns, id)) || this.creating.has(key(ns, id));
  }

  /** The task `id` in `ns`; throws kind "not found" (`task <id>: not found`) when there is none. */
  get(ns: string, id: string): Task {
    return this.getTask(ns, id);
  }

  private getTask(ns: string, id: string): ShimTask {
    const t = this.tasks.get(key(ns, id));
    if (!t) throw errNotFound(`task ${id}`);
    return t;
  }

  /** The tasks of `ns` (of every namespace when undefined). */
  list(ns?: string): Task[] {
    return [...this.tasks.values()].filter((t) => ns === undefined || t.namespace === ns);
  }

  /** The connection for a shim address: the one open, or a new one (then tracked). */
  private async shimAt(address: string): Promise<ShimConnection> {
    const existing = this.shims.get(address);
    if (existing) {
      const s = await existing.catch(() => undefined);
      if (s && !s.closed) return s;
      if (this.shims.get(address) === existing) this.shims.delete(address);
    }
    const p = ShimConnection.connect(address).then((s) => {
      s.callTimeoutMs = this.timeouts.call;
      this.live.set(address, s);
      this.track(s);
      return s;
    });
    this.shims.set(address, p);
    p.catch(() => {
      if (this.shims.get(address) === p) this.shims.delete(address);
    });
    return p;
  }

  /**
   * Create a task: a bundle with the spec, the shim's `start` (a new shim, or the group's running
   * one), then the shim's Create. The task's init process is created, not started: call start().
   * Throws kind "already exists" when the task exists; on failure nothing is left behind.
   */
  async create(ns: string, id: string, opts: CreateTaskOptions): Promise<Task> {
    const k = key(ns, id);
    if (this.tasks.has(k) || this.creating.has(k)) throw errAlreadyExists(`task ${id}`);
    this.creating.add(k);
    const runtime = opts.runtime || DEFAULT_RUNTIME;
    let bundle: Bundle | undefined;
    let shim: ShimConnection | undefined;
    let connected: Promise<void> | undefined;
    let launchedPid: number | undefined;
    try {
      const bytes = specBytes(opts.spec);
      bundle = await newBundle(this.stateDir, this.rootDir, ns, id, bytes);
      const topts = opts.taskOptions ?? opts.runtimeOptions;
      const groupName = shimGroupOf(bytes, id);
      const group = runtime === GROUPING_RUNTIME ? groupKey(ns, groupName) : undefined;
      const running = group === undefined ? undefined : this.runningShimOf(group);
      if (running) {
        // The group's shim runs and berthd is connected to it: its `start` would only answer that
        // address (a Go process start, 10–20 ms on this path). Write what it would have written.
        writeFileSync(join(bundle.path, "address"), running.address, { mode: 0o600 });
        writeFileSync(join(bundle.path, "shim-binary-path"), findShimBinary(runtime), { mode: 0o600 });
        // only now: a create that fails before this point must not touch the group's shim
        shim = running;
        shim.tasks.add(k);
      } else {
        const started = await startShim(this.env, bundle, runtime, topts, groupName);
        if (started.pid !== undefined) this.shimPids.add(started.pid);
        launchedPid = started.pid;
        try {
          shim = await this.shimAt(started.address);
        } catch (err) {
          started.logPipe?.destroy();
          throw err;
        }
        // kept with the connection: the shim of a group writes to its first bundle's log
        shim.addLog(started.logPipe);
        shim.tasks.add(k);
        // Connect (the shim's PID, for reaping) goes out with Create instead of a round trip
        // before it: a shim just started answers late on a busy machine (a median of ~25 ms with
        // eight pods starting at once).
        const s = shim;
        connected = s.connectTask(ns, id).then(({ shimPid }) => {
          if (shimPid > 0) this.shimPids.add(shimPid);
          if (group !== undefined && !s.closed && this.live.get(s.address) === s) {
            this.groups.set(group, s.address);
            s.groups.add(group);
          }
        });
        connected.catch(() => {}); // awaited with Create below
      }
      const creating = shim.client.create(
        {
          id,
          bundle: bundle.path,
          rootfs: (opts.rootfs ?? []).map((m) => ({
            type: m.type,
            source: m.source,
            target: m.target ?? "",
            options: m.options,
          })),
          terminal: opts.terminal ?? false,
          stdin: opts.stdin ?? "",
          stdout: opts.stdout ?? "",
          stderr: opts.stderr ?? "",
          options: topts && { typeUrl: topts.typeUrl, value: topts.value },
        },
        { namespace: ns },
      );
      const [r] = await Promise.all([creating, connected]);
      const task = new ShimTask(shim, bundle, runtime, r.pid, (t) => this.remove(t));
      this.tasks.set(k, task);
      return task;
    } catch (err) {
      if (shim) {
        const s = shim;
        this.deleting.add(k);
        try {
          await s.client.delete({ id }, { namespace: ns, timeoutMs: 10_000 }).catch(() => {});
          s.tasks.delete(k);
          if (s.tasks.size === 0) await this.shutdown(s, ns, id);
        } finally {
          this.deleting.delete(k);
        }
      }
      if (bundle && !shim) this.killUnreachableShim(bundle, launchedPid);
      if (bundle) {
        const b = bundle;
        await deleteDeadShim(this.env, b, runtime, this.timeouts.cleanup).catch(() => {});
        await deleteBundle(b).catch((e) => this.log.warn("cannot remove bundle", { error: String(e) }));
      }
      throw err;
    } finally {
      this.creating.delete(k);
    }
  }

  /** Watch a new connection: when it closes by itself, its tasks are cleaned up as dead. */
  private track(shim: ShimConnection): void {
    shim.conn.once("closed", () => {
      this.forget(shim);
      shim.close(); // its log pipes

      setTimeout(() => this.reapShims(), 50).unref();
      if (this.closing) return;
      for (const k of shim.tasks) {
        const t = this.tasks.get(k);
        if (!t || t.shim !== shim || this.deleting.has(k)) continue;
        this.tasks.delete(k);
        void this.cleanupAfterDeadShim(t.bundleInfo, t.runtime);
      }
    });
  }

  /** The open connection to a group's running shim, unless it is closing or being shut down. */
  private runningShimOf(group: string): ShimConnection | undefined {
    const address = this.groups.get(group);
    if (address === undefined) return undefined;
    const s = this.live.get(address);
    return s && !s.closed ? s : undefined;
  }

  /** No new task joins this connection (it is closed or being shut down). */
  private forget(shim: ShimConnection): void {
    for (const g of shim.groups) if (this.groups.get(g) === shim.address) this.groups.delete(g);
    shim.groups.clear();
    if (this.live.get(shim.address) !== shim) return;
    this.live.delete(shim.address);
    this.shims.delete(shim.address);
  }

  /** Shut a shim down (as asked for by its last task) and wait for its connection to close, then reap it. */
  private async shutdown(shim: ShimConnection, ns: string, id: string): Promise<void> {
    this.forget(shim);
    if (!shim.closed) {
      const closed = new Promise<void>((r) => shim.conn.once("closed", () => r()));
      try {
        await shim.client.shutdown({ id }, { namespace: ns, timeoutMs: 5000 });
      } catch {
        // the shim closes its socket while answering; either way it is going
      }
      let t: NodeJS.Timeout | undefined;
      const wentAway = await Promise.race([
        closed.then(() => true),
        new Promise<boolean>((r) => (t = setTimeout(() => r(false), this.timeouts.shutdown || 3000))),
      ]);
      clearTimeout(t);
      if (!wentAway) this.killLingeringShim(shim, ns, id);
    }
    shim.close();
    this.reapShims();
  }

  /**
   * A shim started for this bundle (by berthd, or by `start`: its `shim.pid`; a shim of a group
   * that was already running writes none here) but that berthd could not connect to: no Shutdown
   * can reach it.
   */
  private killUnreachableShim(bundle: Bundle, launchedPid?: number): void {
    let pid = launchedPid ?? 0;
    if (pid === 0) {
      try {
        pid = Number(readFileSync(join(bundle.path, "shim.pid"), "utf8").trim()) || 0;
      } catch {
        return; // no shim was spawned for this bundle
      }
    }
    killStrayShim(this.log, pid, "shim started but unreachable", {
      id: bundle.id,
      namespace: bundle.namespace,
    });
  }

  /**
   * A shim still there after Shutdown and its bound: one that lost or refused the request (a
   * loaded machine can delay it past the call's deadline). It has no task berthd knows of, and no
   * connection can reach it any more (forget() ran), so nothing would ever stop it: kill it, unless
   * a task that joined its group meanwhile connected to it again.
   */
  private killLingeringShim(shim: ShimConnection, ns: string, id: string): void {
    if (shim.tasks.size > 0 || this.live.has(shim.address) || this.shims.has(shim.address)) return;
    // the PID as the shim reported it at Connect
    killStrayShim(this.log, shim.shimPid, "shim still running after shutdown", { id, namespace: ns });
  }

  /** Delete the init process, stop the shim (unless other tasks use it) and remove the bundle. */
  async delete(ns: string, id: string): Promise<ExitInfo> {
    return this.remove(this.getTask(ns, id));
  }

  private async remove(task: ShimTask): Promise<ExitInfo> {
    const { namespace: ns, taskId: id, shim } = task;
    const k = key(ns, id);
    if (this.tasks.get(k) !== task) throw errNotFound(`task ${id}`);
    if (this.deleting.has(k)) throw new BerthError("failed precondition", `task ${id} is being deleted`);
    this.deleting.add(k);
    try {
      let exit: ExitInfo | undefined;
      let shimErr: unknown;
      try {
        const r = await shim.client.delete(
          { id },
          { namespace: ns, timeoutMs: shim.callTimeoutMs || undefined },
        );
        exit = { pid: r.pid, ...exitStatusOf(r.exitStatus, r.exitedAt) };
      } catch (err) {
        if (shim.closed && !this.closing && !isNotFound(err)) {
          // the shim died under this call: its close handler left the task to us (it was being
          // deleted), so clean up as after any dead shim rather than keep a task nothing can reach
          this.tasks.delete(k);
          shim.tasks.delete(k);
          await this.cleanupAfterDeadShim(task.bundleInfo, task.runtime);
          throw err;
        }
        if (!isNotFound(err)) throw err;
        shimErr = err;
      }
      this.tasks.delete(k);
      shim.tasks.delete(k);
      if (shim.tasks.size === 0) await this.shutdown(shim, ns, id);
      await deleteBundle(task.bundleInfo).catch((e) =>
        this.log.warn("cannot remove bundle", { id, namespace: ns, error: String(e) }),
      );
      if (shimErr) throw shimErr;
      return exit!;
    } finally {
      this.deleting.delete(k);
    }
  }

  /**
   * After a shim is gone: its `delete`, then /tasks/exit and /tasks/delete like containerd. Not
   * when loading after a restart: containerd publishes only for tasks it had in its list.
   */
  private async cleanupAfterDeadShim(bundle: Bundle, runtime: string, publish = true): Promise<void> {
    const { namespace: ns, id } = bundle;
    this.log.info("cleaning up dead shim", { id, namespace: ns });
    let pid = 0;
    try {
      pid = Number(readFileSync(join(bundle.path, "init.pid"), "utf8").trim()) || 0;
    } catch {
      // no init pid recorded
    }
    let exitStatus = 255;
    let exitedAt = new Date();
    try {
      const r = await deleteDeadShim(this.env, bundle, runtime, this.timeouts.cleanup);
      exitStatus = r.exitStatus;
      if (r.exitedAt) exitedAt = new Date(Number(r.exitedAt.seconds) * 1000 + r.exitedAt.nanos / 1e6);
    } catch (err) {
      this.log.warn("failed to clean up after shim disconnected", { id, error: (err as Error).message });
    }
    let address: string | undefined;
    try {
      address = shimAddressOf(bundle);
    } catch {
      // no address recorded: no shim was started for it
    }
    if (address) await removeDeadShimSocket(address);
    await deleteBundle(bundle).catch((e) => this.log.warn("cannot remove bundle", { error: String(e) }));
    this.reapShims();
    if (!publish) return;
    const ts = timestampFromDate(exitedAt);
    this.events.publish(
      ns,
      "/tasks/exit",
      packEvent(
        TaskExitSchema,
        create(TaskExitSchema, { containerId: id, id, pid, exitStatus, exitedAt: ts }),
      ),
    );
    this.events.publish(
      ns,
      "/tasks/delete",
      packEvent(
        TaskDeleteSchema,
        create(TaskDeleteSchema, { containerId: id, pid, exitStatus, exitedAt: ts }),
      ),
    );
  }

  /**
   * After a restart: reconnect to the shims of the bundles left in the state dir (tasks of one
   * group share one connection again); bundles whose shim is gone, whose shim holds no such task,
   * or whose container no longer exists are cleaned up.
   */
  async loadExisting(containerExists: (ns: string, id: string) => boolean): Promise<void> {
    let nss: string[];
    try {
      nss = readdirSync(this.stateDir);
    } catch {
      return;
    }
    const gone: ShimTask[] = [];
    /** Each connection with a task that loaded on it, to shut down the ones left without tasks. */
    const seen = new Map<ShimConnection, { ns: string; id: string }>();
    /** The bundles by the address of their shim: a shim's tasks load one after the other. */
    const byShim = new Map<string, { ns: string; id: string }[]>();
    for (const ns of nss) {
      if (ns.startsWith(".")) continue;
      let ids: string[];
      try {
        if (!statSync(join(this.stateDir, ns)).isDirectory()) continue;
        ids = readdirSync(join(this.stateDir, ns));
      } catch {
        continue;
      }
      for (const id of ids) {
        const bundle = bundlePaths(this.stateDir, this.rootDir, ns, id);
        if (id.startsWith(".")) {
          await deleteBundle({ ...bundle, id: id.slice(1), path: bundle.path }).catch(() => {});
          continue;
        }
        let address: string;
        try {
          address = shimAddressOf(bundle);
        } catch {
          address = `\0${ns}\0${id}`; // no shim recorded: loads (and is cleaned up) on its own
        }
        const list = byShim.get(address);
        if (list) list.push({ ns, id });
        else byShim.set(address, [{ ns, id }]);
      }
    }
    // Different shims load at once: each task costs a connection and a Connect call, a round
    // trip to another process, and a node with hundreds of tasks waited for them one by one.
    // The tasks of one shim (a pod's) load in order, as a failure on one may close its
    // connection, which the next then opens afresh.
    const queues = [...byShim.values()];
    const worker = async () => {
      for (let q = queues.shift(); q !== undefined; q = queues.shift())
        for (const { ns, id } of q) await this.loadOne(ns, id, containerExists, seen, gone);
    };
    await Promise.all(Array.from({ length: Math.min(LOAD_CONCURRENCY, queues.length) }, worker));
    for (const t of gone) await this.remove(t).catch(() => {});
    for (const [s, t] of seen) if (s.tasks.size === 0 && !s.closed) await this.shutdown(s, t.ns, t.id);
  }

  /** Reconnect to one bundle's task after a restart, or clean up after its shim. */
  private async loadOne(
    ns: string,
    id: string,
    containerExists: (ns: string, id: string) => boolean,
    seen: Map<ShimConnection, { ns: string; id: string }>,
    gone: ShimTask[],
  ): Promise<void> {
    const bundle = bundlePaths(this.stateDir, this.rootDir, ns, id);
    let runtime = DEFAULT_RUNTIME;
    try {
      runtime = readFileSync(join(bundle.path, "shim-binary-path"), "utf8").trim() || runtime;
    } catch {
      // no shim was started for this bundle
    }
    const exists = containerExists(ns, id);
    if (!exists) this.log.info("container for bundle is gone; cleaning up", { id, namespace: ns });
    let shim: ShimConnection | undefined;
    let taskPid: number;
    try {
      shim = await this.shimAt(shimAddressOf(bundle));
      seen.set(shim, { ns, id });
      shim.addLog(openShimLog(bundle, this.env.log));
      const c = await shim.connectTask(ns, id, this.timeouts.load || 5000);
      taskPid = c.taskPid;
      if (c.shimPid > 0) this.shimPids.add(c.shimPid);
    } catch (err) {
      // a shim that accepts but does not answer (stopped, wedged): drop the connection rather
      // than ask it to shut down below, which would wait on it once more
      if (shim && shim.tasks.size === 0 && !shim.closed) {
        seen.delete(shim);
        this.forget(shim);
        shim.close();
      }
      if (exists)
        this.log.info("shim gone while berthd was down", {
          id,
          namespace: ns,
          error: (err as Error).message,
        });
      await this.cleanupAfterDeadShim(bundle, runtime, false);
      return;
    }
    if (taskPid === 0) {
      // berthd died between starting the shim and creating its task (or between deleting the
      // task and stopping the shim): no task to manage; the shim is stopped below unless other
      // tasks use it, rather than keep a task that no call can see, delete or let its container go
      this.log.info("shim holds no task; stopping it", { id, namespace: ns, pid: shim.shimPid });
      await this.cleanupAfterDeadShim(bundle, runtime, false);
      return;
    }
    const task = new ShimTask(shim, bundle, runtime, taskPid, (t) => this.remove(t));
    this.tasks.set(key(ns, id), task);
    shim.tasks.add(key(ns, id));
    if (exists) this.log.info("reconnected to shim", { id, namespace: ns, pid: shim.shimPid });
    else gone.push(task);
  }
}

export { bundlePaths };
