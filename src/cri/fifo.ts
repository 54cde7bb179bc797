// The FIFOs a container's (or exec's) stdio goes through: created here, opened by the shim for
// writing when it creates the process. berthd reads them with non-blocking sockets.
//
// A FIFO read end sees end-of-file whenever no writer is open, including before the shim opened
// its end; so a placeholder writer is held until the process exists (`release`), after which the
// reader sees EOF exactly when the process's stdio closes.
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, constants as fsc, openSync } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { Socket } from "node:net";
import { join } from "node:path";
import { mknod, S_IFIFO } from "../sys/mknod.js";

export interface FifoSet {
  dir: string;
  stdin: string;
  stdout: string;
  stderr: string;
}

export class FifoReader {
  readonly socket: Socket;
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
    this.socket = new Socket({ fd, readable: true, writable: false });
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

/** Make `<dir>/<random>/<id>-{stdin,stdout,stderr}` FIFOs (stdin only when asked for). */
export async function newFifoSet(parent: string, id: string, withStdin: boolean): Promise<FifoSet> {
  const dir = join(parent, randomBytes(8).toString("hex"));
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const set: FifoSet = {
    dir,
    stdin: withStdin ? join(dir, `${id}-stdin`) : "",
    stdout: join(dir, `${id}-stdout`),
    stderr: join(dir, `${id}-stderr`),
  };
  for (const p of [set.stdin, set.stdout, set.stderr]) if (p && !existsSync(p)) mknod(p, S_IFIFO | 0o700);
  return set;
}

export async function removeFifoSet(set: FifoSet | undefined): Promise<void> {
  if (set) await rm(set.dir, { recursive: true, force: true });
}
