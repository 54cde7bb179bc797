// A listening unix socket as a bare fd, for a child to inherit (a shim serves on the socket its
// starter made and passes as fd 3). Node's net.Server would keep the socket on berthd's event
// loop and offers no fd to hand over; these are the few syscalls instead.
import { unlinkSync } from "node:fs";
import { errnoName, lastErrno, libc } from "./libc.js";

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const F_DUPFD_CLOEXEC = 1030;
/** sizeof(struct sockaddr_un): a 2-byte family and 108 bytes of path. */
const SOCKADDR_UN_SIZE = 110;
const SUN_PATH_MAX = 107;

function fns() {
  return {
    socket: libc("socket", "int socket(int domain, int type, int protocol)"),
    bind: libc("bind", "int bind(int fd, const void *addr, uint32_t len)"),
    listen: libc("listen", "int listen(int fd, int backlog)"),
    fcntl: libc("fcntl", "int fcntl(int fd, int cmd, int arg)"),
    close: libc("close", "int close(int)"),
  };
}
let bound: ReturnType<typeof fns> | undefined;

function sysError(call: string, path: string): NodeJS.ErrnoException {
  const errno = lastErrno();
  const name = errnoName(errno);
  const err = new Error(`${call} ${path}: ${name}`) as NodeJS.ErrnoException;
  err.code = name;
  err.errno = -errno;
  err.syscall = call;
  err.path = path;
  return err;
}

/**
 * socket + bind + listen on `path` (close-on-exec). The fd is at least `minFd`, so that a
 * spawn's dup2 onto a low number never lands on the fd itself. Throws with the errno's name as
 * `code` (EADDRINUSE when the path exists). The caller closes the fd with closeFd.
 */
export function listenUnixFd(path: string, minFd = 3, backlog = 4096): number {
  const bytes = Buffer.from(path, "utf8");
  if (bytes.length > SUN_PATH_MAX || bytes.includes(0))
    throw new Error(`unix socket path ${JSON.stringify(path)} is too long or holds a NUL`);
  bound ??= fns();
  const f = bound;
  let fd = f.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw sysError("socket", path);
  try {
    if (fd < minFd) {
      const high = f.fcntl(fd, F_DUPFD_CLOEXEC, minFd) as number;
      if (high < 0) throw sysError("fcntl", path);
      f.close(fd);
      fd = high;
    }
    const addr = Buffer.alloc(SOCKADDR_UN_SIZE);
    addr.writeUInt16LE(AF_UNIX, 0);
    bytes.copy(addr, 2);
    if ((f.bind(fd, addr, 2 + bytes.length + 1) as number) !== 0) throw sysError("bind", path);
    if ((f.listen(fd, backlog) as number) !== 0) {
      const err = sysError("listen", path);
      unlinkSync(path);
      throw err;
    }
    return fd;
  } catch (err) {
    f.close(fd);
    throw err;
  }
}

export function closeFd(fd: number): void {
  bound ??= fns();
  bound.close(fd);
}
