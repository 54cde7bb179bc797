// Child subreaping: a daemonized shim is reparented to the nearest subreaper when its starter
// exits. On these machines PID 1 never reaps, so berthd (and tests that start shims) mark
// themselves subreapers and reap what they launched by PID. Node's own child_process handles
// wait only for the PIDs they spawned, so reaping other PIDs here steals nothing from them.
import { lastErrno, libc } from "./libc.js";

const PR_SET_CHILD_SUBREAPER = 36;
const PR_GET_CHILD_SUBREAPER = 37;
const WNOHANG = 1;
const ECHILD = 10;

/** prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants become this process's children. */
export function setChildSubreaper(on = true): void {
  const prctl = libc("prctl", "int prctl(int, unsigned long, unsigned long, unsigned long, unsigned long)");
  if ((prctl(PR_SET_CHILD_SUBREAPER, on ? 1 : 0, 0, 0, 0) as number) !== 0)
    throw new Error(`prctl(PR_SET_CHILD_SUBREAPER) failed (errno ${lastErrno()})`);
}

export function isChildSubreaper(): boolean {
  const prctl = libc("prctl_get", "int prctl(int, _Out_ int *, unsigned long, unsigned long, unsigned long)");
  const out = [0];
  if ((prctl(PR_GET_CHILD_SUBREAPER, out, 0, 0, 0) as number) !== 0)
    throw new Error(`prctl(PR_GET_CHILD_SUBREAPER) failed (errno ${lastErrno()})`);
  return out[0] !== 0;
}

/**
 * waitpid(pid, WNOHANG): "reaped" once collected, "running" while it lives, "not-child" when it
 * is not (or no longer) a child of this process.
 */
export function reap(pid: number): "reaped" | "running" | "not-child" {
  const waitpid = libc("waitpid", "int waitpid(int, _Out_ int *, int)");
  const status = [0];
  const r = waitpid(pid, status, WNOHANG) as number;
  if (r === pid) return "reaped";
  if (r === 0) return "running";
  const errno = lastErrno();
  if (errno === ECHILD) return "not-child";
  throw new Error(`waitpid(${pid}) failed (errno ${errno})`);
}

const P_ALL = 0;
const WEXITED = 4;
const WNOWAIT = 0x01000000;
/** sizeof(siginfo_t) on Linux, every architecture. */
const SIGINFO_BYTES = 128;
const siginfo = Buffer.alloc(SIGINFO_BYTES);

/**
 * Whether some child of this process has exited and waits to be collected. waitid with WNOWAIT
 * looks without collecting it, so the caller (or Node, for its own children) still gets its
 * status. The kernel writes si_signo (the first int) as SIGCHLD when it found one and 0 when not.
 */
export function hasExitedChild(): boolean {
  const waitid = libc("waitid", "int waitid(int, uint32_t, void *, int)");
  siginfo.fill(0);
  if ((waitid(P_ALL, 0, siginfo, WEXITED | WNOHANG | WNOWAIT) as number) === 0)
    return siginfo.readInt32LE(0) !== 0;
  const errno = lastErrno();
  if (errno === ECHILD) return false;
  throw new Error(`waitid(P_ALL) failed (errno ${errno})`);
}
