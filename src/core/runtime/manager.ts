// The runtime v2 task manager (plugin io.containerd.runtime.v2 "task"): one shim per task, a
// bundle per task under `<state>/<ns>/<id>`, reconnection to live shims after a restart, and the
// clean-up containerd does when a shim dies under it (run the shim's `delete`, publish
// /tasks/exit and /tasks/delete). Task events proper come from the shims themselves, forwarded
// over berthd's ttrpc socket.
//
// berthd is a child subreaper: the shims daemonize and are reparented here, so their PIDs are
// reaped here too (after each shutdown and on a timer), as no init on these machines reaps.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { BerthError, errAlreadyExists, errNotFound, isNotFound } from "../../base/errdefs.js";
import type { Logger } from "../../base/log.js";
import { TaskDeleteSchema, TaskExitSchema } from "../../gen/containerd/events/task_pb.js";
import type { Mount } from "../../gen/containerd/types/mount_pb.js";
import { reap } from "../../sys/reaper.js";
import type { Exchange } from "../events/exchange.js";
import { packEvent } from "../events/exchange.js";
import { type Bundle, bundlePaths, deleteBundle, newBundle } from "./bundle.js";
import { deleteDeadShim, Shim, type ShimEnv } from "./shim.js";

export interface AnyValue {
  typeUrl: string;
  value: Uint8Array;
}

export interface CreateOpts {
  spec?: AnyValue;
  /** Runtime name (io.containerd.runc.v2) or a shim binary path. */
  runtime: string;
  runtimeOptions?: AnyValue;
  taskOptions?: AnyValue;
  rootfs: Mount[];
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

export interface TaskExitInfo {
  pid: number;
  exitStatus: number;
  exitedAt: Date | undefined;
}

const key = (ns: string, id: string) => `${ns}/${id}`;

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

export class TaskManager {
  private readonly tasks = new Map<string, Shim>();
  private readonly creating = new Set<string>();
  private readonly deleting = new Set<string>();
  /** Shim PIDs to reap once they exit. */
  private readonly shimPids = new Set<number>();
  private timer: NodeJS.Timeout | undefined;
  /** Set at shutdown: shims outlive berthd, so closing their connections is not their death. */
  private closing = false;

  constructor(
    private readonly stateDir: string,
    private readonly rootDir: string,
    private readonly env: ShimEnv,
    private readonly events: Exchange,
    private readonly log: Logger,
  ) {}

  /** Start the periodic reaper. */
  startReaper(intervalMs = 1000): void {
    this.timer = setInterval(() => this.reapShims(), intervalMs);
    this.timer.unref();
  }

  /** Collect exited shims (by PID) and any other shim/runc zombie reparented here. */
  reapShims(): void {
    for (const pid of this.shimPids) {
      try {
        if (reap(pid) !== "running") this.shimPids.delete(pid);
      } catch {
        this.shimPids.delete(pid);
      }
    }
    // orphans this process never spawned through Node (their starter exited): zombies whose
    // parent is berthd and whose command is a shim or runc
    const names = childPids();
    if (names === undefined) return;
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
      const [state, ppid] = stat.slice(close + 2).split(" ");
      if (state !== "Z" || Number(ppid) !== process.pid) continue;
      if (!comm.startsWith("containerd-shim") && !comm.startsWith("runc")) continue;
      if (this.env.spawned.has(pid)) continue;
      try {
        reap(pid);
      } catch {
        // gone meanwhile
      }
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    if (this.timer) clearInterval(this.timer);
    for (const s of this.tasks.values()) s.close();
    this.tasks.clear();
  }

  has(ns: string, id: string): boolean {
    return this.tasks.has(key(ns, id)) || this.creating.has(key(ns, id));
  }

  get(ns: string, id: string): Shim {
    const s = this.tasks.get(key(ns, id));
    if (!s) throw errNotFound(`task ${id}`);
    return s;
  }

  list(ns?: string): Shim[] {
    return [...this.tasks.values()].filter((s) => ns === undefined || s.namespace === ns);
  }

  async create(ns: string, id: string, opts: CreateOpts): Promise<{ shim: Shim; pid: number }> {
    const k = key(ns, id);
    if (this.tasks.has(k) || this.creating.has(k)) throw errAlreadyExists(`task ${id}`);
    this.creating.add(k);
    let bundle: Bundle | undefined;
    let shim: Shim | undefined;
    try {
      bundle = await newBundle(this.stateDir, this.rootDir, ns, id, opts.spec?.value);
      const topts = opts.taskOptions ?? opts.runtimeOptions;
      shim = await Shim.start(this.env, bundle, opts.runtime, topts);
      this.track(shim);
      const r = await shim.task.create(
        {
          id,
          bundle: bundle.path,
          rootfs: opts.rootfs,
          terminal: opts.terminal,
          stdin: opts.stdin,
          stdout: opts.stdout,
          stderr: opts.stderr,
          options: topts && { typeUrl: topts.typeUrl, value: topts.value },
        },
        { namespace: ns },
      );
      this.tasks.set(k, shim);
      return { shim, pid: r.pid };
    } catch (err) {
      if (shim) {
        this.deleting.add(k);
        try {
          await shim.task.delete({ id }, { namespace: ns, timeoutMs: 10_000 }).catch(() => {});
          await this.shutdown(shim);
        } finally {
          this.deleting.delete(k);
        }
      }
      if (bundle) {
        const b = bundle;
        await deleteDeadShim(this.env, b, opts.runtime).catch(() => {});
        await deleteBundle(b).catch((e) => this.log.warn("cannot remove bundle", { error: String(e) }));
      }
      throw err;
    } finally {
      this.creating.delete(k);
    }
  }

  private track(shim: Shim): void {
    if (shim.shimPid > 0) this.shimPids.add(shim.shimPid);
    shim.conn.once("closed", () => {
      setTimeout(() => this.reapShims(), 50).unref();
      const k = key(shim.namespace, shim.id);
      if (this.closing || this.deleting.has(k) || this.tasks.get(k) !== shim) return;
      this.tasks.delete(k);
      void this.cleanupAfterDeadShim(shim.bundle, shim.runtime);
    });
  }

  /** Shut a shim down and wait for its connection to close, then reap it. */
  private async shutdown(shim: Shim): Promise<void> {
    if (!shim.conn.closed) {
      const closed = new Promise<void>((r) => shim.conn.once("closed", () => r()));
      try {
        await shim.task.shutdown({ id: shim.id }, { namespace: shim.namespace, timeoutMs: 5000 });
      } catch {
        // the shim closes its socket while answering; either way it is going
      }
      await Promise.race([closed, new Promise((r) => setTimeout(r, 3000))]);
    }
    shim.close();
    this.reapShims();
  }

  /** Delete the init process, stop the shim and remove the bundle. */
  async delete(ns: string, id: string): Promise<TaskExitInfo> {
    const k = key(ns, id);
    const shim = this.get(ns, id);
    if (this.deleting.has(k)) throw new BerthError("failed precondition", `task ${id} is being deleted`);
    this.deleting.add(k);
    try {
      let exit: TaskExitInfo | undefined;
      let shimErr: unknown;
      try {
        const r = await shim.task.delete({ id }, { namespace: ns });
        exit = {
          pid: r.pid,
          exitStatus: r.exitStatus,
          exitedAt: r.exitedAt
            ? new Date(Number(r.exitedAt.seconds) * 1000 + r.exitedAt.nanos / 1e6)
            : undefined,
        };
      } catch (err) {
        if (!isNotFound(err)) throw err;
        shimErr = err;
      }
      this.tasks.delete(k);
      await this.shutdown(shim);
      await deleteBundle(shim.bundle).catch((e) =>
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
      const r = await deleteDeadShim(this.env, bundle, runtime);
      exitStatus = r.exitStatus;
      if (r.exitedAt) exitedAt = new Date(Number(r.exitedAt.seconds) * 1000 + r.exitedAt.nanos / 1e6);
    } catch (err) {
      this.log.warn("failed to clean up after shim disconnected", { id, error: (err as Error).message });
    }
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
   * After a restart: reconnect to the shims of the bundles left in the state dir; bundles whose
   * shim is gone (or whose container no longer exists) are cleaned up and their exit reported.
   */
  async loadExisting(containerExists: (ns: string, id: string) => boolean): Promise<void> {
    let nss: string[];
    try {
      nss = readdirSync(this.stateDir);
    } catch {
      return;
    }
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
        let runtime = "io.containerd.runc.v2";
        try {
          runtime = readFileSync(join(bundle.path, "shim-binary-path"), "utf8").trim() || runtime;
        } catch {
          // no shim was started for this bundle
        }
        if (!containerExists(ns, id)) {
          this.log.info("container for bundle is gone; cleaning up", { id, namespace: ns });
          try {
            const shim = await Shim.load(this.env, bundle, runtime);
            this.track(shim);
            this.tasks.set(key(ns, id), shim);
            await this.delete(ns, id).catch(() => {});
          } catch {
            await this.cleanupAfterDeadShim(bundle, runtime, false);
          }
          continue;
        }
        let shim: Shim;
        try {
          shim = await Shim.load(this.env, bundle, runtime);
        } catch (err) {
          this.log.info("shim gone while berthd was down", {
            id,
            namespace: ns,
            error: (err as Error).message,
          });
          await this.cleanupAfterDeadShim(bundle, runtime, false);
          continue;
        }
        if (shim.taskPid === 0) {
          // berthd died between starting the shim and creating its task (or between deleting the
          // task and stopping the shim): no task to manage; stop the shim rather than keep a task
          // that no call can see, delete or let its container go
          this.log.info("shim holds no task; stopping it", { id, namespace: ns, pid: shim.shimPid });
          await this.shutdown(shim);
          await this.cleanupAfterDeadShim(bundle, runtime, false);
          continue;
        }
        this.tasks.set(key(ns, id), shim);
        this.track(shim);
        this.log.info("reconnected to shim", { id, namespace: ns, pid: shim.shimPid });
      }
    }
  }
}

export { bundlePaths };
