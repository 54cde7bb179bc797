// A container's output, from its stdio FIFOs into its CRI log file (when the kubelet gave a log
// path; else the output is read and dropped so the container never blocks on a full pipe).
import { constants as fsc, openSync } from "node:fs";
import { Socket } from "node:net";
import { dirname } from "node:path";
import { type FifoPaths, FifoReader, type FifoSet } from "../core/cio/fifo.js";
import { CriLogFile, copyToCriLog } from "./logs.js";
import type { ContainerIO, CriState } from "./state.js";
import type { ContainerRecord } from "./store.js";

/**
 * Open readers on the FIFOs and start copying. With `reattach` (after a restart) the shim
 * already holds the write ends, so the readers start without a placeholder writer.
 */
export async function attachOutput(
  st: CriState,
  c: ContainerRecord,
  fifos: FifoPaths & { dir?: string },
  reattach = false,
): Promise<ContainerIO> {
  const set: FifoSet = { ...fifos, dir: fifos.dir || dirname(fifos.stdout), terminal: fifos.stderr === "" };
  const readers: FifoReader[] = [];
  let log: CriLogFile | undefined;
  try {
    if (c.logPath) {
      log = new CriLogFile(c.logPath);
      await log.open();
    }
    const copies: Promise<void>[] = [];
    const maxLine = st.deps.config.max_container_log_line_size;
    for (const [stream, path] of [
      ["stdout", set.stdout],
      ["stderr", set.stderr],
    ] as const) {
      if (!path) continue;
      const r = new FifoReader(path);
      readers.push(r);
      if (log) copies.push(copyToCriLog(r.socket, stream, log, maxLine));
      else {
        r.socket.resume();
        copies.push(new Promise((res) => r.socket.once("close", () => res())));
      }
    }
    if (reattach) for (const r of readers) r.release();
    const stdin = set.stdin ? stdinWriter(set.stdin) : undefined;
    const io: ContainerIO = { fifos: set, readers, stdin, log, drained: Promise.all(copies).then(() => {}) };
    st.io.set(c.id, io);
    return io;
  } catch (err) {
    for (const r of readers) r.close();
    log?.close();
    throw err;
  }
}

/** The write end of a stdin FIFO, opened read-write so opening never waits for the shim. */
function stdinWriter(path: string): Socket {
  const fd = openSync(path, fsc.O_RDWR | fsc.O_NONBLOCK);
  const sock = new Socket({ fd, readable: false, writable: true });
  sock.on("error", () => {});
  return sock;
}
