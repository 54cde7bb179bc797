// The CLI's side of task I/O: berth's own stdin/stdout/stderr connected to a process's FIFOs.
import {
  fifoIO as coreFifoIO,
  newFifoIO as coreNewFifoIO,
  type FifoPaths,
  type IOStreams,
  type TaskIO,
} from "../../core/cio/index.js";

/** This process's standard streams, read only when used (process.stdin is made on first access). */
export const STDIO: IOStreams = {
  get stdin() {
    return process.stdin;
  },
  get stdout() {
    return process.stdout;
  },
  get stderr() {
    return process.stderr;
  },
};

/** FIFOs at `paths` (an existing process's, to attach) piped to our stdio. */
export const fifoIO = (paths: FifoPaths, terminal: boolean): TaskIO => coreFifoIO(paths, terminal, STDIO);

/** New FIFOs for `id` under `fifoDir` (default /run/berth/fifo) piped to our stdio, or kept (detach). */
export function newFifoIO(
  id: string,
  terminal: boolean,
  execId?: string,
  opts: { fifoDir?: string; keep?: boolean } = {},
): TaskIO {
  return coreNewFifoIO(id, terminal, STDIO, { root: opts.fifoDir, execId, keep: opts.keep });
}
