// Attach: a client watching a running container's output (and resizing its terminal). The
// container's stdout/stderr FIFOs are already read by the CRI log copier (src/cri/container-io.ts);
// an attacher adds one more listener on those readers, so every attacher and the log see the same
// bytes and detaching (the client going away) leaves the container and its log alone.
// With stdin (a container created `stdin: true`), what the client sends goes into the container's
// stdin FIFO; with `stdin_once`, the client's end of input closes the container's stdin.
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
    const into = req.stdin ? io.stdin : undefined;
    if (rc.stdin && into) {
      rc.stdin.on("data", (b: Buffer) => into.write(b));
      rc.stdin.once("end", () => {
        if (c.config.stdinOnce) into.end();
      });
    } else rc.stdin?.resume(); // not asked for: read and drop, so its flow control keeps moving
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
