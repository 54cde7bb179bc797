// Starting short-lived helper programs (CNI plugins, `containerd-shim-* start`) with
// glibc's posix_spawn instead of Node's child_process.
//
// Why: libuv starts a child with fork(), and the event loop is blocked until the child has
// exec'd. fork() copies the page tables of the whole daemon, so the block grows with berthd's
// heap: 6–10 ms per child measured at ~120 MiB RSS, and a pod sandbox runs about ten children
// (four CNI plugins for ADD, four for DEL, the shim). glibc's posix_spawn uses
// clone(CLONE_VM|CLONE_VFORK): nothing is copied and the loop is blocked ~0.3 ms.
// (docs/performance.md has the profile.)
//
// What libuv did for us and is done here instead:
// - the child's stdio: pipes made with pipe2(O_CLOEXEC); the child's ends are dup2'd onto 0/1/2
//   by the file actions (dup2 clears close-on-exec on the copy), the parent's ends become
//   non-blocking net.Sockets on the event loop;
// - signals: Node ignores SIGPIPE, and ignored dispositions survive exec, so every signal is
//   reset to its default in the child and its mask is emptied (POSIX_SPAWN_SETSIGDEF/SETSIGMASK);
// - reaping: libuv's SIGCHLD handler waits only for the PIDs it started itself, so it never
//   takes our children's status. We collect it with waitpid(pid, WNOHANG) for each child still
//   running whenever SIGCHLD arrives (a handler of our own, beside libuv's), and when the child's
//   output pipes reach EOF. A timer backing off from 1 ms to 1 s is the safety net. Polling at EOF
//   alone lost a race: the kernel closes an exiting program's pipes before its status can be
//   waited for, so the poll often found it still running and the status then waited for the
//   timer, up to 50 ms later (a pod sandbox waits for ten such children in a row). After EOF the
//   timer starts again from 1 ms: worker threads get no signal events, so there it is the
//   timer that sees the exit.

import { accessSync, constants as fsConstants, statSync } from "node:fs";
import { Socket } from "node:net";
import { constants } from "node:os";
import type { Readable, Writable } from "node:stream";
import { errnoName, lastErrno, libc } from "./libc.js";

const O_CLOEXEC = 0o2000000;
const O_RDWR = 2;
const WNOHANG = 1;
const EINTR = 4;
const ECHILD = 10;
const POSIX_SPAWN_SETSIGMASK = 0x08;
const POSIX_SPAWN_SETSIGDEF = 0x04;
const POSIX_SPAWN_SETSID = 0x80;
const POSIX_SPAWN_SETPGROUP = 0x02;

// glibc's opaque types, over-allocated: posix_spawn_file_actions_t is 80 bytes and
// posix_spawnattr_t 336 on x86_64/arm64; sigset_t is 128.
const FILE_ACTIONS_SIZE = 256;
const ATTR_SIZE = 512;
const SIGSET_SIZE = 128;

/** "pipe": a pipe to the parent; "ignore": /dev/null; a number: that fd of berthd, shared. */
export type StdioSpec = "pipe" | "ignore" | number;

export interface FastSpawnOptions {
  /** The complete environment of the child (not merged with berthd's). */
  env: NodeJS.ProcessEnv;
  cwd?: string;
  stdio?: [StdioSpec, StdioSpec, StdioSpec];
  /** Start the child in a new session (setsid), as child_process's `detached`. */
  detached?: boolean;
  /** Start the child in a process group of its own (setpgid(0, 0)), as Go's `Setpgid`. */
  ownProcessGroup?: boolean;
  /**
   * berthd's fds the child gets as fd 3, 4, …, as Go's `ExtraFiles`. Each must be above the last
   * of those numbers (dup2 onto itself would keep its close-on-exec flag).
   */
  extraFds?: number[];
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface FastChild {
  readonly pid: number;
  readonly stdin: Writable | null;
  readonly stdout: Readable | null;
  readonly stderr: Readable | null;
  /** Resolves once the child has been reaped. */
  readonly exited: Promise<ExitStatus>;
  kill(signal?: NodeJS.Signals | number): void;
}

const signalNames = new Map<number, NodeJS.Signals>(
  Object.entries(constants.signals).map(([name, n]) => [n, name as NodeJS.Signals]),
);

function fns() {
  return {
    pipe2: libc("pipe2", "int pipe2(_Out_ int *fds, int flags)"),
    close: libc("close", "int close(int)"),
    faInit: libc("posix_spawn_file_actions_init", "int posix_spawn_file_actions_init(void *fa)"),
    faDestroy: libc("posix_spawn_file_actions_destroy", "int posix_spawn_file_actions_destroy(void *fa)"),
    faDup2: libc(
      "posix_spawn_file_actions_adddup2",
      "int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd)",
    ),
    faOpen: libc(
      "posix_spawn_file_actions_addopen",
      "int posix_spawn_file_actions_addopen(void *fa, int fd, const char *path, int oflag, unsigned int mode)",
    ),
    faChdir: libc(
      "posix_spawn_file_actions_addchdir_np",
      "int posix_spawn_file_actions_addchdir_np(void *fa, const char *path)",
    ),
    attrInit: libc("posix_spawnattr_init", "int posix_spawnattr_init(void *attr)"),
    attrDestroy: libc("posix_spawnattr_destroy", "int posix_spawnattr_destroy(void *attr)"),
    attrFlags: libc("posix_spawnattr_setflags", "int posix_spawnattr_setflags(void *attr, short flags)"),
    attrPgroup: libc("posix_spawnattr_setpgroup", "int posix_spawnattr_setpgroup(void *attr, int pgroup)"),
    attrSigdef: libc(
      "posix_spawnattr_setsigdefault",
      "int posix_spawnattr_setsigdefault(void *attr, const void *set)",
    ),
    attrSigmask: libc(
      "posix_spawnattr_setsigmask",
      "int posix_spawnattr_setsigmask(void *attr, const void *set)",
    ),
    sigfillset: libc("sigfillset", "int sigfillset(void *set)"),
    sigemptyset: libc("sigemptyset", "int sigemptyset(void *set)"),
    spawn: libc(
      "posix_spawn",
      "int posix_spawn(_Out_ int *pid, const char *path, void *fa, void *attr, const char **argv, const char **envp)",
    ),
    waitpid: libc("waitpid", "int waitpid(int, _Out_ int *, int)"),
    fcntl: libc("fcntl", "int fcntl(int fd, int cmd, int arg)"),
  };
}
let bound: ReturnType<typeof fns> | undefined;

/** The signal sets every spawn uses: all signals to default, nothing blocked. Built once. */
let sigsets: { all: Buffer; none: Buffer } | undefined;

const F_SETPIPE_SZ = 1031;

/**
 * A pipe's two ends, both close-on-exec (a child gets one through its stdio, dup'ed over 0 or 1).
 * With `size`, the kernel is asked for that much buffer; a smaller limit (fs.pipe-max-size for an
 * unprivileged daemon) keeps the default. The caller closes both fds. A caller that reads the
 * pipe itself (compression.ts reads zstd's output into one reused buffer with net.Socket's
 * `onread`) passes the child's end as a numeric stdio fd.
 */
export function makePipe(size?: number): { read: number; write: number } {
  bound ??= fns();
  const fds = [0, 0];
  if ((bound.pipe2(fds, O_CLOEXEC) as number) !== 0) {
    const errno = lastErrno();
    const err = new Error(`pipe2: ${errnoName(errno)}`) as NodeJS.ErrnoException;
    err.code = errnoName(errno);
    err.errno = -errno;
    err.syscall = "pipe2";
    throw err;
  }
  const [read, write] = fds as [number, number];
  // best effort: a pipe with the default buffer still works, in 64 KiB steps
  if (size !== undefined) bound.fcntl(write, F_SETPIPE_SZ, size);
  return { read, write };
}

function spawnError(what: string, errno: number, file: string): Error {
  const name = errnoName(errno);
  const err = new Error(`spawn ${file}: ${what}: ${name}`) as NodeJS.ErrnoException;
  err.code = name;
  err.errno = -errno;
  err.syscall = `spawn ${file}`;
  err.path = file;
  return err;
}

/** What posix_spawn takes, made ready on the calling thread; release() frees it on every path. */
interface Prepared {
  file: string;
  fa: Buffer;
  attr: Buffer;
  argv: (string | null)[];
  envp: (string | null)[];
  parentFds: (number | undefined)[];
  childFds: number[];
}

function prepare(file: string, args: readonly string[], opts: FastSpawnOptions): Prepared {
  bound ??= fns();
  const f = bound;
  if (!sigsets) {
    const all = Buffer.alloc(SIGSET_SIZE);
    const none = Buffer.alloc(SIGSET_SIZE);
    f.sigfillset(all);
    f.sigemptyset(none);
    sigsets = { all, none };
  }
  const stdio = opts.stdio ?? ["pipe", "pipe", "pipe"];
  const p: Prepared = {
    file,
    fa: Buffer.alloc(FILE_ACTIONS_SIZE),
    attr: Buffer.alloc(ATTR_SIZE),
    argv: [file, ...args, null],
    envp: [],
    // The parent's and the child's end of each pipe; closed on every error path.
    parentFds: [undefined, undefined, undefined],
    childFds: [],
  };
  f.faInit(p.fa);
  f.attrInit(p.attr);
  try {
    for (let target = 0; target < 3; target++) {
      const spec = stdio[target]!;
      if (spec === "pipe") {
        let pipe: { read: number; write: number };
        try {
          pipe = makePipe();
        } catch (err) {
          throw spawnError("pipe2", -((err as NodeJS.ErrnoException).errno ?? 0), file);
        }
        // the child reads its stdin, writes stdout/stderr
        const [childEnd, parentEnd] = target === 0 ? [pipe.read, pipe.write] : [pipe.write, pipe.read];
        p.parentFds[target] = parentEnd;
        p.childFds.push(childEnd);
        f.faDup2(p.fa, childEnd, target);
      } else if (spec === "ignore") {
        f.faOpen(p.fa, target, "/dev/null", O_RDWR, 0);
      } else {
        f.faDup2(p.fa, spec, target);
      }
    }
    const extra = opts.extraFds ?? [];
    extra.forEach((fd, i) => {
      if (fd < 3 + extra.length)
        throw new Error(
          `spawn ${file}: extra fd ${fd} would be overwritten (use fds from ${3 + extra.length})`,
        );
      f.faDup2(p.fa, fd, 3 + i);
    });
    if (opts.cwd) f.faChdir(p.fa, opts.cwd);
    f.attrSigdef(p.attr, sigsets.all);
    f.attrSigmask(p.attr, sigsets.none);
    if (opts.ownProcessGroup) f.attrPgroup(p.attr, 0);
    f.attrFlags(
      p.attr,
      POSIX_SPAWN_SETSIGDEF |
        POSIX_SPAWN_SETSIGMASK |
        (opts.detached ? POSIX_SPAWN_SETSID : 0) |
        (opts.ownProcessGroup ? POSIX_SPAWN_SETPGROUP : 0),
    );
    for (const [k, v] of Object.entries(opts.env)) if (v !== undefined) p.envp.push(`${k}=${v}`);
    p.envp.push(null);
    return p;
  } catch (err) {
    finish(p, false);
    throw err;
  }
}

/** After posix_spawn (or instead of it): the child's pipe ends go; on failure the parent's too. */
function finish(p: Prepared, started: boolean): void {
  const f = bound!;
  for (const fd of p.childFds) f.close(fd);
  p.childFds.length = 0;
  if (!started) for (const fd of p.parentFds) if (fd !== undefined) f.close(fd);
  f.faDestroy(p.fa);
  f.attrDestroy(p.attr);
}

/**
 * Starts `file` (an absolute path; no PATH search) with `args` as argv[1..]. Throws when the
 * program cannot be started (ENOENT, EACCES, …) with child_process's error shape.
 *
 * The calling thread waits in posix_spawn until the child has exec'd: ~0.3 ms on a quiet machine,
 * several ms when the child waits for a CPU. The daemon uses fastSpawnAsync.
 */
export function fastSpawn(file: string, args: readonly string[], opts: FastSpawnOptions): FastChild {
  const p = prepare(file, args, opts);
  const pidOut = [0];
  let rc: number;
  try {
    // posix_spawn returns the error number (it does not set errno); glibc reports a failed exec
    // in the child this way too, so ENOENT/EACCES arrive here synchronously.
    rc = bound!.spawn(pidOut, file, p.fa, p.attr, p.argv, p.envp) as number;
  } catch (err) {
    finish(p, false);
    throw err;
  }
  finish(p, rc === 0);
  if (rc !== 0) throw spawnError("posix_spawn", rc, file);
  return new SpawnedChild(pidOut[0]!, p.parentFds);
}

let pendingSpawns = 0;

/**
 * Spawns started by fastSpawnAsync whose PID is not known to the event loop yet. A reaper of
 * orphaned children must not collect a child's status meanwhile: it could be one of these.
 */
export function spawnsInFlight(): number {
  return pendingSpawns;
}

/** posix_spawn on a libuv pool thread: the PID and the parent's ends of the stdio pipes. */
function spawnOnPool(
  file: string,
  args: readonly string[],
  opts: FastSpawnOptions,
): Promise<{ pid: number; parentFds: (number | undefined)[] }> {
  let p: Prepared;
  try {
    p = prepare(file, args, opts);
  } catch (err) {
    return Promise.reject(err);
  }
  const pidOut = [0];
  pendingSpawns++;
  return new Promise((resolve, reject) => {
    const done = (err: unknown, rc: number) => {
      pendingSpawns--;
      finish(p, !err && rc === 0);
      if (err) reject(err);
      else if (rc !== 0) reject(spawnError("posix_spawn", rc, file));
      else resolve({ pid: pidOut[0]!, parentFds: p.parentFds });
    };
    try {
      bound!.spawn.async(pidOut, file, p.fa, p.attr, p.argv, p.envp, done);
    } catch (err) {
      pendingSpawns--;
      finish(p, false);
      reject(err);
    }
  });
}

/**
 * fastSpawn with posix_spawn run on a libuv pool thread: the event loop spends ~0.1 ms on the
 * argument conversion instead of waiting for the child's exec, which on a busy machine (a pod's
 * plugins, runc and shims all starting at once) took 1.5–2 ms per child.
 */
export async function fastSpawnAsync(
  file: string,
  args: readonly string[],
  opts: FastSpawnOptions,
): Promise<FastChild> {
  const { pid, parentFds } = await spawnOnPool(file, args, opts);
  return new SpawnedChild(pid, parentFds);
}

/**
 * Starts a long-lived child that the caller reaps by PID (a shim: berthd's reaper collects it,
 * so the per-child SIGCHLD polling and timer of fastSpawnAsync are not wanted for it). Its stdio
 * cannot be pipes. Resolves with the PID once the child has exec'd.
 */
export async function spawnUntracked(
  file: string,
  args: readonly string[],
  opts: FastSpawnOptions,
): Promise<number> {
  if ((opts.stdio ?? ["pipe"]).includes("pipe"))
    throw new Error(`spawn ${file}: an untracked child cannot have pipes`);
  return (await spawnOnPool(file, args, opts)).pid;
}

/** Children not reaped yet: SIGCHLD polls each of them (waitpid by PID, never -1). */
const running = new Set<SpawnedChild>();
let sigchldInstalled = false;

function pollRunning(): void {
  for (const c of running) c.poll();
}

class SpawnedChild implements FastChild {
  readonly stdin: Writable | null;
  readonly stdout: Readable | null;
  readonly stderr: Readable | null;
  readonly exited: Promise<ExitStatus>;
  private status: ExitStatus | undefined;
  private resolveExit!: (s: ExitStatus) => void;
  private timer: NodeJS.Timeout | undefined;
  private delay = 1;

  constructor(
    readonly pid: number,
    fds: (number | undefined)[],
  ) {
    this.exited = new Promise((resolve) => {
      this.resolveExit = resolve;
    });
    const wrap = (fd: number | undefined, readable: boolean) =>
      fd === undefined ? null : new Socket({ fd, readable, writable: !readable });
    this.stdin = wrap(fds[0], false);
    this.stdout = wrap(fds[1], true);
    this.stderr = wrap(fds[2], true);
    for (const s of [this.stdout, this.stderr]) s?.once("end", () => this.exiting());
    running.add(this);
    if (!sigchldInstalled) {
      // (a signal listener does not keep the process alive)
      process.on("SIGCHLD", pollRunning);
      sigchldInstalled = true;
    }
    this.schedule();
  }

  private schedule(): void {
    this.timer = setTimeout(() => this.poll(), this.delay);
    this.delay = Math.min(this.delay * 2, 1000);
  }

  /**
   * Its output reached EOF: it is most likely exiting. The kernel closes its pipes before its
   * status can be waited for, so the poll may find it still running; the next polls then start
   * again from 1 ms instead of the backed-off delay. This matters on worker threads (the layer
   * extractions' `zstd`), where no SIGCHLD listener runs: a program that had run for a second
   * was otherwise seen to exit up to a second late.
   */
  private exiting(): void {
    this.delay = 1;
    this.poll();
  }

  /** waitpid(WNOHANG); reschedules itself until the child is reaped. */
  poll(): void {
    if (this.status) return;
    const st = [0];
    let r: number;
    do r = bound!.waitpid(this.pid, st, WNOHANG) as number;
    while (r < 0 && lastErrno() === EINTR);
    if (r === 0) {
      clearTimeout(this.timer);
      this.schedule();
      return;
    }
    clearTimeout(this.timer);
    if (r < 0) {
      // ECHILD: something else reaped it (a reaper that ignored the caller's spawned set), so its
      // status is lost; any other error means the same for us. Either way it is gone.
      const errno = lastErrno();
      if (errno !== ECHILD) process.emitWarning(`waitpid(${this.pid}) failed: errno ${errno}`);
      this.finish({ code: null, signal: null });
      return;
    }
    const raw = st[0]!;
    const termsig = raw & 0x7f;
    this.finish(
      termsig === 0
        ? { code: (raw >> 8) & 0xff, signal: null }
        : { code: null, signal: signalNames.get(termsig) ?? null },
    );
  }

  private finish(s: ExitStatus): void {
    this.status = s;
    running.delete(this);
    this.resolveExit(s);
  }

  kill(signal: NodeJS.Signals | number = "SIGTERM"): void {
    if (this.status) return;
    try {
      process.kill(this.pid, signal);
    } catch {
      // already exited, not yet reaped
    }
  }
}

export interface RunOptions extends FastSpawnOptions {
  /** Written to the child's stdin, which is then closed. */
  stdin?: Uint8Array;
  /** Aborting kills the child (SIGKILL) and rejects with the signal's reason. */
  signal?: AbortSignal;
  /**
   * After the child exits, how long to keep waiting for its stdout/stderr to close (a daemonized
   * grandchild may hold them open forever). Default: wait for them.
   */
  pipeGraceMs?: number;
  /** Called with the child right after it started (e.g. to record its PID until it is reaped). */
  onSpawn?: (child: FastChild) => void;
}

export interface RunResult extends ExitStatus {
  stdout: Buffer;
  stderr: Buffer;
}

/** Runs a program to completion and collects its output (a child_process.execFile for fastSpawn). */
export async function runCollect(
  file: string,
  args: readonly string[],
  opts: RunOptions,
): Promise<RunResult> {
  if (opts.signal?.aborted) throw opts.signal.reason;
  const child = await fastSpawnAsync(file, args, { ...opts, stdio: ["pipe", "pipe", "pipe"] });
  opts.onSpawn?.(child);
  return new Promise((resolve, reject) => {
    const onAbort = () => child.kill("SIGKILL");
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    if (opts.signal?.aborted) onAbort(); // aborted while the spawn ran on the pool thread
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on("data", (b: Buffer) => out.push(b));
    child.stderr!.on("data", (b: Buffer) => err.push(b));
    for (const s of [child.stdout!, child.stderr!]) s.on("error", () => {});
    // A child that exits before reading its stdin makes this write fail with EPIPE; its exit
    // status says what happened.
    child.stdin!.on("error", () => {});
    child.stdin!.end(
      opts.stdin ? Buffer.from(opts.stdin.buffer, opts.stdin.byteOffset, opts.stdin.byteLength) : undefined,
    );
    const closed = (s: Readable) =>
      new Promise<void>((res) => (s.closed ? res() : s.once("close", () => res())));
    const pipes = Promise.all([closed(child.stdout!), closed(child.stderr!)]);
    child.exited.then(async (st) => {
      if (opts.pipeGraceMs === undefined) await pipes;
      else {
        let t: NodeJS.Timeout | undefined;
        await Promise.race([pipes, new Promise((res) => (t = setTimeout(res, opts.pipeGraceMs)))]);
        clearTimeout(t);
        child.stdout!.destroy();
        child.stderr!.destroy();
      }
      opts.signal?.removeEventListener("abort", onAbort);
      if (opts.signal?.aborted) reject(opts.signal.reason);
      else resolve({ ...st, stdout: Buffer.concat(out), stderr: Buffer.concat(err) });
    });
  });
}

const pathCache = new Map<string, string>();

/** The first executable `name` on $PATH (cached), or `name` itself when it holds a slash. */
export function lookPath(name: string): string {
  if (name.includes("/")) return name;
  const hit = pathCache.get(name);
  if (hit) return hit;
  for (const dir of (
    process.env.PATH || "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  ).split(":")) {
    if (!dir) continue;
    const p = `${dir}/${name}`;
    try {
      accessSync(p, fsConstants.X_OK);
      if (!statSync(p).isFile()) continue;
    } catch {
      continue;
    }
    pathCache.set(name, p);
    return p;
  }
  const err = new Error(`spawn ${name}: executable file not found in $PATH`) as NodeJS.ErrnoException;
  err.code = "ENOENT";
  throw err;
}
