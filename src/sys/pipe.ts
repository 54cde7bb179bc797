// A real pipe (pipe2), for a child's stdin or stdout. Node's `spawn` connects a child's stdio
// through socketpairs, whose buffers are small and whose reads land in freshly allocated memory;
// a pipe can be given a larger buffer and read with net.Socket's `onread` into one buffer that is
// filled again and again (src/core/diff/compression.ts).
import { errnoName, lastErrno, libc } from "./libc.js";

const O_CLOEXEC = 0o2000000;
const F_SETPIPE_SZ = 1031;

function fns() {
  return {
    pipe2: libc("pipe2", "int pipe2(_Out_ int *fds, int flags)"),
    fcntl: libc("fcntl", "int fcntl(int fd, int cmd, int arg)"),
  };
}
let bound: ReturnType<typeof fns> | undefined;

/**
 * A pipe's two ends, both close-on-exec (a child gets one by its stdio, dup'ed over 0 or 1). With
 * `size`, the kernel is asked for that much buffer; a smaller limit (fs.pipe-max-size for an
 * unprivileged daemon) keeps the default. The caller closes both fds.
 */
export function makePipe(size?: number): { read: number; write: number } {
  bound ??= fns();
  const fds = [0, 0];
  if ((bound.pipe2(fds, O_CLOEXEC) as number) < 0) {
    const errno = lastErrno();
    const err = new Error(`pipe2: ${errnoName(errno)}`) as NodeJS.ErrnoException;
    err.code = errnoName(errno);
    err.syscall = "pipe2";
    throw err;
  }
  const [read, write] = fds as [number, number];
  // best effort: a pipe with the default buffer still works, in 64 KiB steps
  if (size !== undefined) bound.fcntl(write, F_SETPIPE_SZ, size);
  return { read, write };
}
