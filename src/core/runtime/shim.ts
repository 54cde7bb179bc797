// Launching runtime v2 shims the way containerd 1.6 does, and talking to them over ttrpc.
//
//   <binary> -namespace NS -address <grpc socket> -publish-binary <helper> -id ID [-debug] start
//
// runs with cwd = bundle, env TTRPC_ADDRESS=<ttrpc socket> and GOMAXPROCS=2, the runtime options
// (a protobuf Any) on stdin. It daemonizes the real shim, prints its ttrpc address and exits. Before
// that the `log` FIFO in the bundle is opened here read-write, so the shim's open for writing never
// blocks; what it logs goes to berthd's log. A shim may serve several tasks (a group, see
// ShimConnection). `delete` (same flags plus -bundle) cleans up after a
// shim that died, printing a task.v2 DeleteResponse.
import { closeSync, existsSync, constants as fsc, openSync, readFileSync, writeFileSync } from "node:fs";
import { Socket } from "node:net";
import { delimiter, isAbsolute, join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { AnySchema } from "@bufbuild/protobuf/wkt";
import { errInvalidArgument, errNotFound } from "../../base/errdefs.js";
import type { Logger } from "../../base/log.js";
import {
  type DeleteResponse,
  DeleteResponseSchema,
  Task,
} from "../../gen/containerd/runtime/v2/task/shim_pb.js";
import { mknod, S_IFIFO } from "../../sys/mknod.js";
import { runCollect } from "../../sys/spawn.js";
import { TtrpcClient, type TtrpcServiceClient } from "../../ttrpc/index.js";
import type { Bundle } from "./bundle.js";
import { canLaunchDirectly, launchShim } from "./shim-launch.js";

export interface ShimEnv {
  /** berthd's gRPC socket (the shim's -address). */
  address: string;
  /** berthd's ttrpc socket (TTRPC_ADDRESS). */
  ttrpcAddress: string;
  /** The -publish-binary path. */
  publishBinary: string;
  debug: boolean;
  log: Logger;
  /** PIDs of children spawned here, while Node still owns them (the reaper must leave them). */
  spawned: Set<number>;
}

/** `io.containerd.runc.v2` → `containerd-shim-runc-v2`; a path is used as it is. */
export function shimBinaryName(runtime: string): string {
  if (isAbsolute(runtime) || runtime.includes("/")) return runtime;
  const parts = runtime.split(".");
  if (parts.length < 2) throw errInvalidArgument(`invalid runtime name ${runtime}`);
  return `containerd-shim-${parts[parts.length - 2]}-${parts[parts.length - 1]}`;
}

export function findShimBinary(runtime: string): string {
  const name = shimBinaryName(runtime);
  if (name.includes("/")) {
    if (!existsSync(name))
      throw errNotFound(`runtime ${JSON.stringify(runtime)} binary not installed "${name}"`);
    return name;
  }
  for (const dir of (process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin").split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, name);
    if (existsSync(p)) return p;
  }
  throw errNotFound(`runtime ${JSON.stringify(runtime)} binary not installed "${name}"`);
}

interface RunResult {
  code: number | null;
  stdout: Buffer;
  stderr: Buffer;
}

async function run(
  env: ShimEnv,
  binary: string,
  args: string[],
  cwd: string | undefined,
  stdin: Uint8Array | undefined,
  timeoutMs = 0,
): Promise<RunResult> {
  // posix_spawn, not child_process: forking the daemon blocks the event loop for several ms
  // (src/sys/spawn.ts). The PID stays in `spawned` until it is reaped here, so the shim reaper
  // never takes its status. A daemonized grandchild may keep the pipes open: they are waited
  // for at most 2 s after the exit. A shim binary that hangs (its `delete` stuck on a wedged
  // runc or mount) is killed after `timeoutMs`, as containerd's cleanup context would.
  let pid: number | undefined;
  const signal = timeoutMs > 0 ? AbortSignal.timeout(timeoutMs) : undefined;
  try {
    const r = await runCollect(binary, args, {
      cwd,
      env: { ...process.env, GOMAXPROCS: "2", TTRPC_ADDRESS: env.ttrpcAddress },
      stdin,
      pipeGraceMs: 2000,
      signal,
      onSpawn: (c) => {
        pid = c.pid;
        env.spawned.add(c.pid);
      },
    });
    return { code: r.code, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    if (signal?.aborted)
      throw new Error(`${binary} ${args[args.length - 1]}: timed out after ${timeoutMs} ms`);
    throw err;
  } finally {
    if (pid !== undefined) env.spawned.delete(pid);
  }
}

/** Open `<bundle>/log` (a FIFO) read-write and copy what the shim writes to the log. */
export function openShimLog(bundle: Bundle, log: Logger): Socket | undefined {
  const path = join(bundle.path, "log");
  try {
    if (!existsSync(path)) mknod(path, S_IFIFO | 0o700);
    const fd = openSync(path, fsc.O_RDWR | fsc.O_NONBLOCK);
    let sock: Socket;
    try {
      sock = new Socket({ fd, readable: true, writable: false });
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    let pending = "";
    sock.on("data", (b: Buffer) => {
      pending += b.toString("utf8");
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const l of lines)
        if (l.trim()) log.info(l, { id: bundle.id, namespace: bundle.namespace, shim: true });
    });
    sock.on("error", () => {});
    return sock;
  } catch (err) {
    log.warn("cannot open shim log", { error: (err as Error).message });
    return undefined;
  }
}

const anyBytes = (a: { typeUrl: string; value: Uint8Array } | undefined): Uint8Array | undefined =>
  a ? toBinary(AnySchema, create(AnySchema, { typeUrl: a.typeUrl, value: a.value })) : undefined;

/** The address a shim prints: plain, or (newer shims) a JSON bootstrap with `address`. */
export function parseShimAddress(out: string): string {
  const s = out.trim();
  if (s.startsWith("{")) {
    const j = JSON.parse(s) as { address?: string };
    if (!j.address) throw new Error(`shim bootstrap without address: ${s}`);
    return j.address;
  }
  return s;
}

/**
 * One running shim and berthd's ttrpc connection to it. Several tasks may share it: a shim started
 * for a task whose spec names a group (containerd-shim-runc-v2 reads the annotations
 * `io.containerd.runc.v2.group` and `io.kubernetes.cri.sandbox-id`) answers `start` for the other
 * tasks of that group with its own address, so the CRI's pod gets one shim. `tasks` holds the keys
 * of the tasks using it; the shim is stopped when the last of them is deleted.
 */
export class ShimConnection {
  readonly client: TtrpcServiceClient<typeof Task>;
  shimPid = 0;
  /** `<ns>/<id>` of the tasks (being created or created) on this shim. */
  readonly tasks = new Set<string>();
  /** The groups (TaskManager's keys) whose tasks join this shim without running its `start`. */
  readonly groups = new Set<string>();
  /**
   * The bound on each call to this shim other than Wait (0: none). A stopped or wedged shim would
   * otherwise hold every caller (and the gRPC call behind it) for ever; past it the call fails
   * with DeadlineExceeded, while the shim's other tasks and every other shim are unaffected.
   */
  callTimeoutMs = 0;
  private readonly logPipes: Socket[] = [];

  private constructor(
    readonly address: string,
    readonly conn: TtrpcClient,
  ) {
    this.client = conn.service(Task);
  }

  static async connect(address: string): Promise<ShimConnection> {
    return new ShimConnection(address, await TtrpcClient.connect(address));
  }

  get closed(): boolean {
    return this.conn.closed;
  }

  /** Keep reading a log FIFO the shim writes to, until this connection is closed. */
  addLog(pipe: Socket | undefined): void {
    if (!pipe) return;
    if (this.conn.closed) pipe.destroy();
    else this.logPipes.push(pipe);
  }

  /** Connect for one task: the shim's PID and that task's init PID (0 when the shim has no such task). */
  async connectTask(
    ns: string,
    id: string,
    timeoutMs = 10_000,
  ): Promise<{ shimPid: number; taskPid: number }> {
    const r = await this.client.connect({ id }, { namespace: ns, timeoutMs });
    this.shimPid = r.shimPid;
    return { shimPid: r.shimPid, taskPid: r.taskPid };
  }

  close(): void {
    this.conn.close();
    for (const p of this.logPipes) p.destroy();
    this.logPipes.length = 0;
  }
}

/** The flags containerd gives a shim binary before its command (`start`, `delete`). */
function shimFlags(env: ShimEnv, bundle: Bundle): string[] {
  return [
    "-namespace",
    bundle.namespace,
    "-address",
    env.address,
    "-publish-binary",
    env.publishBinary,
    "-id",
    bundle.id,
  ];
}

/**
 * Start a bundle's shim: resolves with its ttrpc address (a new shim's, or the running shim of the
 * bundle's group) and the bundle's log FIFO, opened here (the caller keeps it with the shim's
 * connection, or destroys it when the shim was already running). The runc v2 shim is started
 * directly when shim-launch.ts covers the case (then `pid` is the new shim's, for the caller to
 * reap); otherwise its `start` runs. `group` is the task's shim group (shimGroupOf).
 */
export async function startShim(
  env: ShimEnv,
  bundle: Bundle,
  runtime: string,
  opts: { typeUrl: string; value: Uint8Array } | undefined,
  group: string,
): Promise<{ address: string; logPipe: Socket | undefined; pid?: number }> {
  const binary = findShimBinary(runtime);
  const logPipe = openShimLog(bundle, env.log);
  try {
    const started =
      (canLaunchDirectly(binary, runtime, opts) && (await launchShim(env, bundle, binary, group))) ||
      (await runStart(env, bundle, binary, opts));
    writeFileSync(join(bundle.path, "shim-binary-path"), binary, { mode: 0o600 });
    return { ...started, logPipe };
  } catch (err) {
    logPipe?.destroy();
    throw err;
  }
}

/** `<shim> … start`: the shim's address as it prints it. */
async function runStart(
  env: ShimEnv,
  bundle: Bundle,
  binary: string,
  opts: { typeUrl: string; value: Uint8Array } | undefined,
): Promise<{ address: string }> {
  const args = shimFlags(env, bundle);
  if (env.debug) args.push("-debug");
  args.push("start");
  const r = await run(env, binary, args, bundle.path, anyBytes(opts));
  if (r.code !== 0) {
    const text = Buffer.concat([r.stdout, r.stderr]).toString("utf8").trim();
    throw new Error(`${text}: exit status ${r.code}`);
  }
  return { address: parseShimAddress(r.stdout.toString("utf8")) };
}

/** The address a bundle's shim wrote at `start` (the bundle's `address` file). */
export function shimAddressOf(bundle: Bundle): string {
  return readFileSync(join(bundle.path, "address"), "utf8").trim();
}

/** Run `<shim> ... -bundle B delete` for a shim that is gone; its DeleteResponse (exit status). */
export async function deleteDeadShim(
  env: ShimEnv,
  bundle: Bundle,
  runtime: string,
  timeoutMs = 0,
): Promise<DeleteResponse> {
  let binary: string;
  const recorded = join(bundle.path, "shim-binary-path");
  binary = existsSync(recorded) ? readFileSync(recorded, "utf8").trim() : findShimBinary(runtime);
  if (!existsSync(binary)) binary = findShimBinary(runtime);
  const args = [...shimFlags(env, bundle), "-bundle", bundle.path, "delete"];
  const r = await run(env, binary, args, bundle.path, undefined, timeoutMs);
  if (r.code !== 0) throw new Error(`${r.stderr.toString("utf8").trim()}: exit status ${r.code}`);
  const warn = r.stderr.toString("utf8").trim();
  if (warn) env.log.warn("cleanup warnings", { id: bundle.id, warnings: warn });
  return fromBinary(DeleteResponseSchema, r.stdout);
}
