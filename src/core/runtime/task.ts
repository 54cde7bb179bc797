// The in-process Task API: what berthd's own callers (the Tasks gRPC service, the CRI plugin) use to
// run containers through runtime v2 shims. Only plain TypeScript types appear here; the shim's ttrpc
// client and protobuf messages stay behind it (process.ts, shim.ts, manager.ts).
//
// A task is a container's init process plus the shim that runs it. The shim keeps running
// processes when berthd restarts: TaskManager.loadExisting reconnects and every call here works on
// the reconnected tasks as on new ones (wait included).
//
// Use (the TaskManager is the runtime plugin's instance, `io.containerd.runtime.v2` "task"):
//
//   const off = manager.onExit((e) => { ... e.namespace, e.id, e.execId ("" = init), e.exitStatus });
//   const task = await manager.create(ns, id, {
//     spec,                                   // OCI spec object (or Any); annotation
//                                             // io.kubernetes.cri.sandbox-id groups tasks on one shim
//     rootfs: snapshotMounts,                 // mounted by the shim on <bundle>/rootfs
//     stdout: "file:///var/log/pods/x/0.log", // or FIFO paths, binary:// URIs, "" for none
//     runtime: "io.containerd.runc.v2", runtimeOptions,  // both optional
//   });
//   await task.start();
//   const p = await task.exec("probe-1", { spec: processSpec, stdout: fifo });
//   await p.start(); const { exitStatus } = await p.wait(); await p.delete();
//   await task.kill("SIGTERM"); const exit = await task.wait(); await task.delete();
//
// Later, by id: manager.get(ns, id) (kind "not found" when absent), manager.list(ns).
import type { Mount } from "../../base/mount.js";

/** A protobuf Any as bytes: the type URL and the encoded message. */
export interface AnyValue {
  typeUrl: string;
  value: Uint8Array;
}

/** Type URL containerd uses for an OCI runtime spec packed as JSON in an Any. */
export const SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/** Type URL of an OCI process spec (what exec takes) packed as JSON in an Any. */
export const PROCESS_SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/** A process's status, as containerd's ProcessStatus names them. */
export type ProcessStatus = "created" | "running" | "stopped" | "paused" | "pausing" | "unknown";

/**
 * How a process ended. `exitedAt` is undefined only when the shim sent no time; `exitedAtNs` is
 * the same instant in nanoseconds since the Unix epoch, exact (a Date keeps milliseconds only; the
 * CRI's `finished_at` wants nanoseconds).
 */
export interface ExitStatus {
  exitStatus: number;
  exitedAt?: Date;
  exitedAtNs?: bigint;
}

/** An exit with the PID the process had (what delete returns). */
export interface ExitInfo extends ExitStatus {
  pid: number;
}

/**
 * A process as the shim reports it. While running, exitStatus is 0 and exitedAt the zero time
 * (year 1); once stopped they say how it ended.
 */
export interface ProcessState extends ExitStatus {
  /** The task's id for the init process, else the exec id. */
  id: string;
  /** "" for the init process. */
  execId: string;
  pid: number;
  status: ProcessStatus;
  /** The stdio paths or URIs the process was created with. */
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
  /** The task's bundle directory. */
  bundle: string;
}

/** One PID inside a task (Task.pids); `info` is runtime-specific (runc: its ProcessDetails with the exec id). */
export interface PidInfo {
  pid: number;
  info?: AnyValue;
}

/**
 * Where a process's stdio goes. Each is passed to the shim as it is: a FIFO path (the caller
 * creates the FIFOs and keeps a reader on them, e.g. with src/core/cio), `file:///abs/path` (the
 * shim appends the stream to a file), `binary:///abs/path?k=v` (the shim starts a logging binary), or
 * "" for none. With `terminal`, stdout carries the pty and stderr must be "".
 */
export interface StdioOptions {
  stdin?: string;
  stdout?: string;
  stderr?: string;
  terminal?: boolean;
}

/** A signal as a number or a Node signal name ("SIGTERM"). */
export type Signal = number | NodeJS.Signals;

/** Options to create a task (TaskManager.create). */
export interface CreateTaskOptions extends StdioOptions {
  /**
   * The OCI runtime spec, written to the bundle's config.json: a JSON object, or an Any whose value
   * is the spec's JSON (what the Containers store holds, type URL SPEC_TYPE_URL). Its annotation
   * `io.kubernetes.cri.sandbox-id` (or `io.containerd.runc.v2.group`) puts the task into that
   * group's shim (see TaskManager).
   */
  spec?: AnyValue | object;
  /** Runtime name ("io.containerd.runc.v2", the default) or a shim binary path. */
  runtime?: string;
  /** The runtime's options (for runc: containerd.runc.v1.Options), given to the shim on `start`. */
  runtimeOptions?: AnyValue;
  /** Per-task options; when set they replace runtimeOptions for both `start` and create. */
  taskOptions?: AnyValue;
  /** Mounted by the shim, in order, onto `<bundle>/rootfs`: usually the snapshot's mounts. */
  rootfs?: Mount[];
}

/** Options to exec a process in a task (Task.exec). */
export interface ExecOptions extends StdioOptions {
  /**
   * The OCI process spec: a JSON object, or an Any (type URL PROCESS_SPEC_TYPE_URL, JSON value).
   * The runc shim requires it; it is optional only so that a request without one reaches the shim
   * and gets the shim's own error.
   */
  spec?: AnyValue | object;
}

/**
 * One process of a task: the init process (execId "") or an exec'd one. Handles are cheap: they
 * hold no state but the ids and the PID last learnt, so several handles for one process are fine.
 * Errors are BerthErrors with the shim's message (e.g. kind "not found" for an unknown exec id).
 */
export interface Process {
  /** The process id: the task's id for the init process, else the exec id. */
  readonly id: string;
  /** "" for the init process. */
  readonly execId: string;
  /** The task (container) id. */
  readonly taskId: string;
  readonly namespace: string;
  /** The PID from create/start/state; 0 while unknown (a handle from Task.process before state()). */
  readonly pid: number;
  /** Start the process (after create or exec); resolves with its PID. */
  start(): Promise<number>;
  /** Signal the process; `all` signals every process in the task (init only). */
  kill(signal: Signal, opts?: { all?: boolean }): Promise<void>;
  /**
   * Resolves when the process has exited (at once if it already has), until it is deleted. Works
   * for exec'd processes and after a berthd restart. Aborting `signal` rejects (kind "canceled").
   */
  wait(opts?: { signal?: AbortSignal }): Promise<ExitStatus>;
  /** The shim's view of the process; `timeoutMs` bounds the call (kind "deadline exceeded"). */
  state(opts?: { timeoutMs?: number }): Promise<ProcessState>;
  /** Close the process's stdin (the shim closes its write side of the stdin FIFO). */
  closeIO(opts?: { stdin?: boolean }): Promise<void>;
  /** Resize the process's terminal. */
  resize(width: number, height: number): Promise<void>;
  /**
   * Remove an exited process from the shim; resolves with how it ended. On the init process
   * handle from Task.process("") this deletes the init process only (shim and bundle stay): use
   * Task.delete to end a task.
   */
  delete(): Promise<ExitInfo>;
}

/**
 * A task: its init process plus what concerns the whole container. `pid` is the init process's.
 * Task.delete removes the init process (it must have exited: kill and wait first), then stops the
 * shim once no other task uses it, and removes the bundle.
 */
export interface Task extends Process {
  /** The runtime name (or shim binary path) the task runs under. */
  readonly runtime: string;
  /** The bundle directory (`<state>/<ns>/<id>`). */
  readonly bundle: string;
  /** Start a new process in the task (created, not started: call start()). */
  exec(execId: string, opts: ExecOptions): Promise<Process>;
  /** A handle for a process already in the task: "" for init, else an exec id. No call is made. */
  process(execId: string): Process;
  /** The PIDs in the task's container. */
  pids(): Promise<PidInfo[]>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** The runtime's stats for the task (runc: io.containerd.cgroups.v1.Metrics or v2), if any. */
  metrics(): Promise<AnyValue | undefined>;
  /** Change the container's resources (an Any of the runtime's type, or an OCI LinuxResources object). */
  update(opts: { resources?: AnyValue | object; annotations?: Record<string, string> }): Promise<void>;
  /** Delete the task; resolves with the init process's exit. */
  delete(): Promise<ExitInfo>;
}

/**
 * Emitted by TaskManager (onExit) for every process exit the shims report, init and exec'd alike,
 * and for tasks whose shim died (exitStatus 255 unless the shim's cleanup says otherwise).
 */
export interface TaskExitEvent {
  namespace: string;
  /** The task (container) id. */
  id: string;
  /** "" for the init process. */
  execId: string;
  pid: number;
  exitStatus: number;
  exitedAt: Date;
  exitedAtNs: bigint;
}
