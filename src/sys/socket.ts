// Unix socket files the daemon serves on (the gRPC socket, the ttrpc events socket): a stale
// socket file is replaced, a live daemon on it is not, and once listening the file gets the
// configured mode and owner whatever the process umask was.
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { connect } from "node:net";
import { dirname } from "node:path";

/** True if something accepts connections on the unix socket at `path`. */
export function socketIsLive(path: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    const done = (v: boolean) => {
      s.destroy();
      resolve(v);
    };
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
    s.setTimeout(timeoutMs, () => done(false));
  });
}

/** Make the socket's directory and clear a stale socket; refuse if another daemon serves it. */
export async function prepareSocketPath(path: string): Promise<void> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o711 });
  if (!existsSync(path)) return;
  if (!lstatSync(path).isSocket())
    throw new Error(`${path} exists and is not a socket; refusing to replace it`);
  if (await socketIsLive(path)) throw new Error(`another daemon is already serving on ${path}`);
  unlinkSync(path);
}

/**
 * Apply the configured permissions: 0660 and uid/gid. Anyone who can connect can speak to the
 * daemon (on the ttrpc socket: publish task events every subscriber trusts), so the mode never
 * follows the umask.
 */
export function secureSocket(path: string, uid: number, gid: number): void {
  chmodSync(path, 0o660);
  if (uid !== 0 || gid !== 0 || process.getuid?.() === 0) chownSync(path, uid, gid);
}
