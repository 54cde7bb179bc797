// FIFO sets: a process's stdin/stdout/stderr as named pipes in a directory of their own, which the
// shim opens by path. The local side opens them without blocking and copies between them and the
// caller's streams; a detached set is only held open so the shim finds readers.
import { randomBytes } from "node:crypto";
import { closeSync, constants as fsc, mkdirSync, openSync, rmSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { mknod, S_IFIFO } from "../../sys/mknod.js";
import { type IOStreams, NULL_IO, type TaskIO } from "./io.js";

/** Where berth's CLI makes FIFO directories by default. */
export const FIFO_ROOT = "/run/berth/fifo";

export interface FifoPaths {
  stdin: string;
  stdout: string;
  stderr: string;
}

export interface FifoSet extends FifoPaths {
  terminal: boolean;
  /** The directory made for this set (removed with it). */
  dir: string;
}

/** Makes a FIFO at `p` (mode 0600) unless something is there already. */
export function mkfifo(p: string): void {
  try {
    mknod(p, S_IFIFO | 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST" && !/exists/i.test(String(err))) throw err;
  }
}

export interface FifoSetOptions {
  /** A pty merges the output: no stderr FIFO. */
  terminal?: boolean;
  /** Names the set `<id>-<execId>-…` for an exec'd process. */
  execId?: string;
  /** Make a stdin FIFO (default true). */
  stdin?: boolean;
}

/**
 * A new FIFO set for process `id` (or `id-execId`) in a fresh random directory under `root`:
 * `<dir>/<id>-stdin` (unless `stdin: false`), `-stdout` and, without a terminal, `-stderr`.
 */
export function newFifoSet(root: string, id: string, opts: FifoSetOptions = {}): FifoSet {
  const terminal = opts.terminal ?? false;
  mkdirSync(root, { recursive: true, mode: 0o700 });
  const dir = path.join(root, randomBytes(8).toString("hex"));
  mkdirSync(dir, { mode: 0o700 });
  const base = path.join(dir, opts.execId ? `${id}-${opts.execId}` : id);
  const set = {
    stdin: opts.stdin === false ? "" : `${base}-stdin`,
    stdout: `${base}-stdout`,
    stderr: terminal ? "" : `${base}-stderr`,
    terminal,
    dir,
  };
  for (const p of [set.stdin, set.stdout, set.stderr]) if (p) mkfifo(p);
  return set;
}

/** Removes a FIFO set's directory (nothing for no set). */
export function removeFifoSet(set: { dir: string } | undefined): void {
  if (set?.dir) rmSync(set.dir, { recursive: true, force: true });
}

/**
 * Reads a FIFO from this side without the early end-of-file a FIFO gives while no writer has it
 * open: a placeholder writer is held until the process exists (`release`), after which the
 * reader sees EOF exactly when the process's end closes.
 */
export class FifoReader {
  readonly socket: net.Socket;
  private placeholder: number | undefined;

  constructor(readonly path: string) {
    this.placeholder = openSync(path, fsc.O_RDWR | fsc.O_NONBLOCK);
    let fd: number;
    try {
      fd = openSync(path, fsc.O_RDONLY | fsc.O_NONBLOCK);
    } catch (err) {
      closeSync(this.placeholder);
      throw err;
    }
    this.socket = new net.Socket({ fd, readable: true, writable: false });
    this.socket.on("error", () => {});
  }

  /** The writer is open (the process exists): from now on EOF means its stdio closed. */
  release(): void {
    if (this.placeholder === undefined) return;
    closeSync(this.placeholder);
    this.placeholder = undefined;
  }

  close(): void {
    this.release();
    this.socket.destroy();
  }
}

/**
 * Removes the FIFO directory of a process's I/O paths when it is one made by newFifoSet directly
 * under `root` (paths elsewhere, URIs and empty paths are left alone).
 */
export function removeFifoDir(paths: Partial<FifoPaths>, root = FIFO_ROOT): void {
  for (const p of [paths.stdin, paths.stdout, paths.stderr]) {
    if (!p) continue;
    const dir = path.dirname(p);
    if (path.dirname(dir) !== root) continue;
    rmSync(dir, { recursive: true, force: true });
    return;
  }
}

/**
 * Opens the FIFOs at `paths` (making missing ones) and copies stdout/stderr to the caller's
 * streams and, from startInput on, the caller's stdin into the process. This is also how a caller
 * attaches to an existing process: its FIFO paths come from the Tasks API. `streams` is read
 * lazily (stdin only at startInput and close); close() pauses and destroys that stdin and, with
 * `dir`, removes the directory.
 */
export function fifoIO(
  paths: FifoPaths,
  terminal: boolean,
  streams: IOStreams,
  opts: { dir?: string } = {},
): TaskIO {
  for (const p of [paths.stdin, paths.stdout, paths.stderr]) if (p) mkfifo(p);
  const ends: Promise<void>[] = [];
  const sockets: net.Socket[] = [];
  const reader = (p: string, out: NodeJS.WritableStream | undefined) => {
    if (!p) return;
    const fd = openSync(p, fsc.O_RDONLY | fsc.O_NONBLOCK);
    const s = new net.Socket({ fd, readable: true, writable: false });
    sockets.push(s);
    s.on("data", (b: Buffer) => out?.write(b));
    ends.push(
      new Promise((resolve) => {
        s.once("end", resolve);
        s.once("close", resolve);
        s.once("error", () => resolve());
      }),
    );
  };
  reader(paths.stdout, streams.stdout);
  reader(paths.stderr, streams.stderr);
  // Read-write so that opening never blocks for a reader and data waits in the pipe.
  let inFd: number | undefined = paths.stdin ? openSync(paths.stdin, fsc.O_RDWR | fsc.O_NONBLOCK) : undefined;
  let input: net.Socket | undefined;
  return {
    ...paths,
    terminal,
    startInput(onEnd) {
      if (inFd === undefined || input) return;
      const w = new net.Socket({ fd: inFd, readable: false, writable: true });
      inFd = undefined;
      input = w;
      w.on("error", () => {});
      if (onEnd) w.once("close", onEnd);
      const src = streams.stdin;
      if (!src) {
        w.destroySoon();
        return;
      }
      src.on("data", (b: Buffer) => w.write(b));
      src.once("end", () => w.destroySoon());
      src.on("error", () => w.destroy());
    },
    async drained(graceMs = 5000) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all(ends),
        new Promise((r) => {
          timer = setTimeout(r, graceMs);
        }),
      ]);
      clearTimeout(timer);
    },
    close() {
      if (inFd !== undefined) closeSync(inFd);
      inFd = undefined;
      input?.destroy();
      for (const s of sockets) s.destroy();
      const src = streams.stdin as (NodeJS.ReadableStream & { destroy?: () => void }) | undefined;
      src?.pause();
      src?.destroy?.();
      if (opts.dir) removeFifoSet({ dir: opts.dir });
    },
  };
}

/**
 * A new FIFO set for `id` under `root` piped to `streams`; closing it removes the directory.
 * With `keep` (a detached process) the FIFOs are only held open (the shim wants a reader while it
 * opens them) until close(), and outlive this side: what the process writes waits in them for a
 * later attach, and deleting the process removes them (removeFifoDir).
 */
export function newFifoIO(
  id: string,
  terminal: boolean,
  streams: IOStreams,
  opts: { root?: string; execId?: string; keep?: boolean } = {},
): TaskIO {
  const set = newFifoSet(opts.root || FIFO_ROOT, id, { terminal, execId: opts.execId });
  const paths = { stdin: set.stdin, stdout: set.stdout, stderr: set.stderr };
  if (opts.keep) {
    const fds: number[] = [];
    for (const p of [paths.stdin, paths.stdout, paths.stderr]) {
      if (!p) continue;
      fds.push(openSync(p, (p === paths.stdin ? fsc.O_RDWR : fsc.O_RDONLY) | fsc.O_NONBLOCK));
    }
    return {
      ...NULL_IO,
      ...paths,
      terminal,
      close() {
        for (const fd of fds.splice(0)) closeSync(fd);
      },
    };
  }
  return fifoIO(paths, terminal, streams, { dir: set.dir });
}

/**
 * Open a process's stdin FIFO for writing once the shim reads it (write-only non-blocking opens
 * fail with ENXIO until a reader exists, so the data can never sit in a pipe nobody will read),
 * copy `src` into it, and call `onEnd` after the end of `src` was passed
 * on by closing the writer.
 */
export function copyStdin(path: string, src: NodeJS.ReadableStream, onEnd: () => void): { close(): void } {
  let sock: net.Socket | undefined;
  let closed = false;
  const deadline = Date.now() + 10_000;
  const open = () => {
    if (closed) return;
    let fd: number;
    try {
      fd = openSync(path, fsc.O_WRONLY | fsc.O_NONBLOCK);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENXIO" && Date.now() < deadline) setTimeout(open, 5);
      else src.resume();
      return;
    }
    const w = new net.Socket({ fd, readable: false, writable: true });
    sock = w;
    w.on("error", () => {});
    w.once("close", () => {
      if (!closed) onEnd();
    });
    src.pipe(w);
  };
  open();
  return {
    close() {
      closed = true;
      src.unpipe();
      sock?.destroy();
    },
  };
}
