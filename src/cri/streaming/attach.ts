// Attach: a client watching a running container's output (and resizing its terminal). The
// container's stdout/stderr FIFOs are already read by the CRI log copier (src/cri/container-io.ts);
// an attacher adds one more listener on those readers, so every attacher and the log see the same
// bytes and detaching (the client going away) leaves the container and its log alone.
//
// Not done: stdin. CRI containers are started without a stdin FIFO here, so a request with stdin
// is refused with a clear error until container start makes one for `stdin: true` containers.
import type { Socket } from "node:net";
import { errFailedPrecondition, errNotFound } from "../../base/errdefs.js";
import { type CriState, taskOf } from "../state.js";
import type { RemoteCommand, TerminalSize } from "./remotecommand.js";

export interface AttachRequestInfo {
  containerId: string;
  tty: boolean;
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
}

/** Copy a container's output to `rc` until the container's output ends or the client leaves. */
export async function serveAttach(st: CriState, req: AttachRequestInfo, rc: RemoteCommand): Promise<void> {
  let error: string | undefined;
  try {
    const c = st.store.findContainer(req.containerId);
    if (!c) throw errNotFound(`container ${JSON.stringify(req.containerId)}`);
    if (c.status.state !== "running")
      throw errFailedPrecondition(`container ${JSON.stringify(c.id)} is in ${c.status.state} state`);
    const io = st.io.get(c.id);
    if (!io) throw errNotFound(`io of container ${c.id}`);
    const task = taskOf(st, c.id);
    const onResize = (sz: TerminalSize) => void task?.resize(sz.width, sz.height).catch(() => {});
    rc.resize.on("resize", onResize);
    // stdin from the client goes nowhere: read and drop it so its flow control keeps moving
    rc.stdin?.resume();
    const taps: { sock: Socket; fn: (b: Buffer) => void }[] = [];
    const ended: Promise<void>[] = [];
    for (const r of io.readers) {
      const out = r.path === io.fifos.stdout ? rc.stdout : r.path === io.fifos.stderr ? rc.stderr : undefined;
      if (!out) continue;
      const fn = (b: Buffer) => {
        out.write(b);
      };
      r.socket.on("data", fn);
      taps.push({ sock: r.socket, fn });
      ended.push(
        new Promise<void>((res) => {
          r.socket.once("end", () => res());
          r.socket.once("close", () => res());
        }),
      );
    }
    try {
      await Promise.race([ended.length ? Promise.all(ended) : new Promise<void>(() => {}), rc.closed]);
    } finally {
      for (const t of taps) t.sock.off("data", t.fn);
      rc.resize.off("resize", onResize);
    }
  } catch (err) {
    error = (err as Error).message;
  }
  await rc.finish({ error }).catch(() => {});
}
