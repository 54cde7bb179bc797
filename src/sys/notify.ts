// sd_notify: tell systemd (Type=notify) that the daemon is ready or stopping, by a datagram on
// $NOTIFY_SOCKET. Node has no unix datagram sockets, hence libc.
import { lastErrno, libc } from "./libc.js";

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;

function sockaddrUn(path: string): Buffer {
  const p = Buffer.from(path.startsWith("@") ? `\0${path.slice(1)}` : path);
  if (p.length > 107) throw new Error(`NOTIFY_SOCKET path too long: ${path}`);
  const addr = Buffer.alloc(2 + p.length + (path.startsWith("@") ? 0 : 1));
  addr.writeUInt16LE(AF_UNIX, 0);
  p.copy(addr, 2);
  return addr;
}

/** Send `state` (e.g. "READY=1") if running under systemd; returns whether it was sent. */
export function sdNotify(state: string): boolean {
  const target = process.env.NOTIFY_SOCKET;
  if (!target) return false;
  const socket = libc("socket", "int socket(int, int, int)");
  const sendto = libc("sendto", "long sendto(int, const void *, size_t, int, const void *, uint32_t)");
  const close = libc("close", "int close(int)");
  const fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw new Error(`sd_notify: socket failed (errno ${lastErrno()})`);
  try {
    const msg = Buffer.from(state);
    const addr = sockaddrUn(target);
    const n = sendto(fd, msg, msg.length, 0, addr, addr.length) as number;
    if (n < 0) throw new Error(`sd_notify: sendto ${target} failed (errno ${lastErrno()})`);
    return true;
  } finally {
    close(fd);
  }
}

/**
 * The watchdog ping interval systemd asks for, in ms: half of $WATCHDOG_USEC (as sd_watchdog_enabled
 * suggests, so one late ping is not fatal), or undefined when the service has no WatchdogSec= or the
 * variables are meant for another process ($WATCHDOG_PID names a different PID).
 */
export function watchdogIntervalMs(
  env: NodeJS.ProcessEnv = process.env,
  pid = process.pid,
): number | undefined {
  const usec = Number(env.WATCHDOG_USEC);
  if (!env.WATCHDOG_USEC || !Number.isInteger(usec) || usec <= 0) return undefined;
  if (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== pid) return undefined;
  return Math.max(1, Math.floor(usec / 2000));
}

/**
 * Ping systemd's watchdog (WATCHDOG=1) every half period from a timer on the event loop: when the
 * loop wedges the pings stop and systemd restarts the daemon. The timer is unref'd so it never
 * keeps the process alive. The variables are removed from the environment (as
 * sd_watchdog_enabled(1) does) so that shims and runtimes berthd starts do not inherit them.
 * Returns the timer, or undefined when no watchdog is configured.
 */
export function startWatchdog(onError: (err: unknown) => void): NodeJS.Timeout | undefined {
  const interval = watchdogIntervalMs();
  delete process.env.WATCHDOG_USEC;
  delete process.env.WATCHDOG_PID;
  if (interval === undefined) return undefined;
  const ping = () => {
    try {
      sdNotify("WATCHDOG=1");
    } catch (err) {
      onError(err);
    }
  };
  ping();
  const timer = setInterval(ping, interval);
  timer.unref();
  return timer;
}
