// Exec: a new process in a running container's task, its stdio through FIFOs wired to the
// client's streams. TTY sizes from the resize channel reach the process's terminal; stdin ends
// when the client half-closes it; the exit code goes back on the error channel. A client that
// goes away before the process ends gets it killed (nobody could see its output any more).
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { errFailedPrecondition, errNotFound } from "../../base/errdefs.js";
import { copyStdin, fifoIO, newFifoSet, removeFifoSet } from "../../core/cio/fifo.js";
import { PROCESS_SPEC_TYPE_URL, type Process } from "../../core/runtime/task.js";
import type { Spec } from "../oci.js";
import { type CriState, taskOf } from "../state.js";
import type { RemoteCommand, TerminalSize } from "./remotecommand.js";

export interface ExecRequestInfo {
  containerId: string;
  cmd: string[];
  tty: boolean;
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
}

function processSpecOf(st: CriState, id: string): NonNullable<Spec["process"]> {
  const c = st.deps.containers.get(st.deps.namespace, id);
  if (!c.spec) throw errNotFound(`spec of container ${id}`);
  const spec = JSON.parse(Buffer.from(c.spec.value).toString("utf8")) as Spec;
  return spec.process ?? ({} as NonNullable<Spec["process"]>);
}

/** Run the exec and serve it on `rc` until the process ended and its output is delivered. */
export async function serveExec(st: CriState, req: ExecRequestInfo, rc: RemoteCommand): Promise<void> {
  // sizes can come before the process exists: the last one is applied once it started
  let started: Process | undefined;
  let lastSize: TerminalSize | undefined;
  const onResize = (sz: TerminalSize) => {
    lastSize = sz;
    if (started) void started.resize(sz.width, sz.height).catch(() => {});
  };
  rc.resize.on("resize", onResize);
  const c = st.store.findContainer(req.containerId);
  let exitCode: number | undefined;
  let error: string | undefined;
  try {
    if (!c) throw errNotFound(`container ${JSON.stringify(req.containerId)}`);
    if (c.status.state !== "running")
      throw errFailedPrecondition(`container ${JSON.stringify(c.id)} is in ${c.status.state} state`);
    const task = taskOf(st, c.id);
    if (!task) throw errNotFound(`task ${c.id}`);
    const procSpec = processSpecOf(st, c.id);
    const execId = randomBytes(16).toString("hex");
    const set = newFifoSet(join(st.dirs.containerState(c.id), "io"), execId, { terminal: req.tty });
    const paths = {
      stdin: req.stdin ? set.stdin : "",
      stdout: set.stdout,
      stderr: set.stderr,
    };
    // stdin is not given to fifoIO: it opens the FIFO read-write before the shim does, and when
    // such a writer closes before the shim opened its reader, the shim's reader can wait for a
    // writer forever and the process never sees end of input (seen as a rare hung exec)
    const io = fifoIO({ ...paths, stdin: "" }, req.tty, { stdout: rc.stdout, stderr: rc.stderr });
    try {
      const proc = await task.exec(execId, {
        spec: {
          typeUrl: PROCESS_SPEC_TYPE_URL,
          value: new Uint8Array(
            Buffer.from(JSON.stringify({ ...procSpec, args: req.cmd, terminal: req.tty })),
          ),
        },
        stdin: paths.stdin,
        stdout: paths.stdout,
        stderr: paths.stderr,
        terminal: req.tty,
      });
      let ended = false;
      let stdinDone: { close(): void } | undefined;
      void rc.closed.then(() => {
        if (!ended) void proc.kill(9).catch(() => {});
      });
      try {
        await proc.start();
        started = proc;
        if (req.tty && lastSize) await proc.resize(lastSize.width, lastSize.height).catch(() => {});
        if (rc.stdin && paths.stdin)
          stdinDone = copyStdin(paths.stdin, rc.stdin, () => {
            // the client half-closed stdin: the process sees end of input
            void proc.closeIO({ stdin: true }).catch(() => {});
          });
        const exit = await proc.wait();
        ended = true;
        exitCode = exit.exitStatus;
        await io.drained(2000);
      } finally {
        stdinDone?.close();
        await proc.delete().catch(() => {});
      }
    } finally {
      io.close();
      removeFifoSet(set);
    }
  } catch (err) {
    error = (err as Error).message;
  }
  rc.resize.off("resize", onResize);
  await rc.finish({ exitCode, error }).catch(() => {});
}
