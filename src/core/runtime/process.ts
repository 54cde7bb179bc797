// The Task API (task.ts) over a shim's ttrpc client: each call is one shim RPC, with the protobuf
// messages turned into plain values here so that no caller handles them.
import { constants as osc } from "node:os";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { errInvalidArgument } from "../../base/errdefs.js";
import type { Bundle } from "./bundle.js";
import type { ShimConnection } from "./shim.js";
import {
  type AnyValue,
  type ExecOptions,
  type ExitInfo,
  type ExitStatus,
  type PidInfo,
  PROCESS_SPEC_TYPE_URL,
  type Process,
  type ProcessState,
  type ProcessStatus,
  type Signal,
  type Task,
} from "./task.js";

/** containerd.v1.types.Status by number. */
const STATUSES: readonly ProcessStatus[] = ["unknown", "created", "running", "stopped", "paused", "pausing"];

export const statusName = (n: number): ProcessStatus => STATUSES[n] ?? "unknown";
export const statusNumber = (s: ProcessStatus): number => Math.max(0, STATUSES.indexOf(s));

/** Type URL of OCI LinuxResources packed as JSON, what the runc shim's Update decodes. */
export const RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

const NS_PER_S = 1_000_000_000n;

/** A protobuf Timestamp as nanoseconds since the epoch (exact). */
export function timestampNs(ts: Timestamp | undefined): bigint | undefined {
  return ts ? ts.seconds * NS_PER_S + BigInt(ts.nanos) : undefined;
}

/** Nanoseconds since the epoch as a Date (rounded down to the millisecond). */
export function nsDate(ns: bigint): Date {
  let ms = ns / 1_000_000n;
  if (ns < 0n && ms * 1_000_000n !== ns) ms -= 1n;
  return new Date(Number(ms));
}

export function exitStatusOf(exitStatus: number, exitedAt: Timestamp | undefined): ExitStatus {
  const ns = timestampNs(exitedAt);
  return ns === undefined ? { exitStatus } : { exitStatus, exitedAt: nsDate(ns), exitedAtNs: ns };
}

export const isAnyValue = (v: unknown): v is AnyValue =>
  typeof v === "object" &&
  v !== null &&
  typeof (v as AnyValue).typeUrl === "string" &&
  (v as AnyValue).value instanceof Uint8Array;

/** An Any as given, or a JSON object packed under `typeUrl`; undefined stays undefined. */
export function toAny(v: AnyValue | object | undefined, typeUrl: string): AnyValue | undefined {
  if (v === undefined) return undefined;
  if (isAnyValue(v)) return { typeUrl: v.typeUrl, value: v.value };
  return { typeUrl, value: new TextEncoder().encode(JSON.stringify(v)) };
}

/** The spec's JSON bytes: an Any's value, or a JSON object encoded. */
export function specBytes(v: AnyValue | object | undefined): Uint8Array | undefined {
  if (v === undefined) return undefined;
  if (isAnyValue(v)) return v.value;
  return new TextEncoder().encode(JSON.stringify(v));
}

function signalNumber(s: Signal): number {
  if (typeof s === "number") {
    if (!Number.isInteger(s) || s < 0) throw errInvalidArgument(`invalid signal ${s}`);
    return s;
  }
  const n = (osc.signals as Record<string, number | undefined>)[s];
  if (n === undefined) throw errInvalidArgument(`invalid signal ${JSON.stringify(s)}`);
  return n;
}

/** One process in a shim, addressed by task id and exec id. */
export class ShimProcess implements Process {
  constructor(
    /** The shim serving the task (internal; not part of the Process interface). */
    readonly shim: ShimConnection,
    readonly namespace: string,
    readonly taskId: string,
    readonly execId: string,
    public pid = 0,
  ) {}

  get id(): string {
    return this.execId || this.taskId;
  }

  /** Call options: the namespace and the shim's per-call bound (not for Wait, which may block for ever). */
  protected get ns() {
    return { namespace: this.namespace, timeoutMs: this.shim.callTimeoutMs || undefined };
  }

  async start(): Promise<number> {
    const r = await this.shim.client.start({ id: this.taskId, execId: this.execId }, this.ns);
    this.pid = r.pid;
    return r.pid;
  }

  async kill(signal: Signal, opts: { all?: boolean } = {}): Promise<void> {
    await this.shim.client.kill(
      { id: this.taskId, execId: this.execId, signal: signalNumber(signal), all: opts.all ?? false },
      this.ns,
    );
  }

  async wait(opts: { signal?: AbortSignal } = {}): Promise<ExitStatus> {
    const r = await this.shim.client.wait(
      { id: this.taskId, execId: this.execId },
      { namespace: this.namespace, signal: opts.signal },
    );
    return exitStatusOf(r.exitStatus, r.exitedAt);
  }

  async state(opts: { timeoutMs?: number } = {}): Promise<ProcessState> {
    const s = await this.shim.client.state(
      { id: this.taskId, execId: this.execId },
      { namespace: this.namespace, timeoutMs: opts.timeoutMs ?? (this.shim.callTimeoutMs || undefined) },
    );
    if (s.pid) this.pid = s.pid;
    return {
      id: this.id,
      execId: this.execId,
      pid: s.pid,
      status: statusName(s.status),
      stdin: s.stdin,
      stdout: s.stdout,
      stderr: s.stderr,
      terminal: s.terminal,
      bundle: s.bundle,
      ...exitStatusOf(s.exitStatus, s.exitedAt),
    };
  }

  async closeIO(opts: { stdin?: boolean } = {}): Promise<void> {
    if (opts.stdin === false) return;
    await this.shim.client.closeIO({ id: this.taskId, execId: this.execId, stdin: true }, this.ns);
  }

  async resize(width: number, height: number): Promise<void> {
    await this.shim.client.resizePty({ id: this.taskId, execId: this.execId, width, height }, this.ns);
  }

  /** Delete this process in the shim only (for a task's init process Task.delete does more). */
  async deleteInShim(): Promise<ExitInfo> {
    const r = await this.shim.client.delete({ id: this.taskId, execId: this.execId }, this.ns);
    return { pid: r.pid, ...exitStatusOf(r.exitStatus, r.exitedAt) };
  }

  delete(): Promise<ExitInfo> {
    return this.deleteInShim();
  }
}

/** A task: its init process and the container-wide calls. Deletion goes through the manager. */
export class ShimTask extends ShimProcess implements Task {
  constructor(
    shim: ShimConnection,
    readonly bundleInfo: Bundle,
    readonly runtime: string,
    pid: number,
    private readonly remove: (t: ShimTask) => Promise<ExitInfo>,
  ) {
    super(shim, bundleInfo.namespace, bundleInfo.id, "", pid);
  }

  get bundle(): string {
    return this.bundleInfo.path;
  }

  async exec(execId: string, opts: ExecOptions): Promise<Process> {
    await this.shim.client.exec(
      {
        id: this.taskId,
        execId,
        terminal: opts.terminal ?? false,
        stdin: opts.stdin ?? "",
        stdout: opts.stdout ?? "",
        stderr: opts.stderr ?? "",
        spec: toAny(opts.spec, PROCESS_SPEC_TYPE_URL),
      },
      this.ns,
    );
    return new ShimProcess(this.shim, this.namespace, this.taskId, execId);
  }

  process(execId: string): Process {
    return new ShimProcess(this.shim, this.namespace, this.taskId, execId, execId ? 0 : this.pid);
  }

  async pids(): Promise<PidInfo[]> {
    const r = await this.shim.client.pids({ id: this.taskId }, this.ns);
    return r.processes.map((p) =>
      p.info ? { pid: p.pid, info: { typeUrl: p.info.typeUrl, value: p.info.value } } : { pid: p.pid },
    );
  }

  async pause(): Promise<void> {
    await this.shim.client.pause({ id: this.taskId }, this.ns);
  }

  async resume(): Promise<void> {
    await this.shim.client.resume({ id: this.taskId }, this.ns);
  }

  async metrics(): Promise<AnyValue | undefined> {
    const r = await this.shim.client.stats({ id: this.taskId }, this.ns);
    return r.stats && { typeUrl: r.stats.typeUrl, value: r.stats.value };
  }

  async update(opts: { resources?: AnyValue | object; annotations?: Record<string, string> }): Promise<void> {
    await this.shim.client.update(
      {
        id: this.taskId,
        resources: toAny(opts.resources, RESOURCES_TYPE_URL),
        annotations: opts.annotations ?? {},
      },
      this.ns,
    );
  }

  override delete(): Promise<ExitInfo> {
    return this.remove(this);
  }
}
