// Runtime v2 bundles: `<state>/<ns>/<id>` holding config.json (the container's OCI spec), a
// `rootfs` dir the shim mounts the task's rootfs on, a `work` link to `<root>/<ns>/<id>`, and the
// `log` FIFO the shim writes its log to. Removal renames to a hidden name first so a crash halfway
// never leaves a bundle that looks whole.
import { existsSync } from "node:fs";
import { mkdir, rename, rm, rmdir, symlink, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { validateIdentifier } from "../../base/identifiers.js";
import { realSyscalls, type Syscalls } from "../../sys/syscalls.js";
import { unmountAll } from "../mount/mount.js";

export interface Bundle {
  id: string;
  namespace: string;
  path: string;
  workDir: string;
}

export function bundlePaths(stateDir: string, rootDir: string, ns: string, id: string): Bundle {
  return { id, namespace: ns, path: join(stateDir, ns, id), workDir: join(rootDir, ns, id) };
}

export async function newBundle(
  stateDir: string,
  rootDir: string,
  ns: string,
  id: string,
  spec: Uint8Array | undefined,
  sys: Syscalls = realSyscalls,
): Promise<Bundle> {
  validateIdentifier(id);
  const b = bundlePaths(stateDir, rootDir, ns, id);
  // On the thread pool, independent steps at once: under load, on this kind of disk, these
  // metadata calls take milliseconds each, which the event loop must not wait out in sync calls.
  await mkdir(dirname(b.path), { recursive: true, mode: 0o711 });
  await mkdir(b.path, { mode: 0o700 });
  try {
    // all settled before a failure removes the bundle, so that nothing is created after it
    const steps = await Promise.allSettled([
      (async () => {
        await mkdir(dirname(b.workDir), { recursive: true, mode: 0o711 });
        await mkdir(b.workDir, { mode: 0o711 }).catch(async (err: NodeJS.ErrnoException) => {
          if (err.code !== "EEXIST") throw err;
          // left by a task of the same id that was not cleaned up
          await rm(b.workDir, { recursive: true, force: true });
          await mkdir(b.workDir, { mode: 0o711 });
        });
        await symlink(b.workDir, join(b.path, "work"));
      })(),
      spec ? writeFile(join(b.path, "config.json"), spec, { mode: 0o666 }) : undefined,
      mkdir(join(b.path, "rootfs"), { mode: 0o711 }),
    ]);
    for (const r of steps) if (r.status === "rejected") throw r.reason;
  } catch (err) {
    await deleteBundle(b, sys).catch(() => {});
    throw err;
  }
  return b;
}

async function atomicDelete(path: string): Promise<void> {
  const hidden = join(dirname(path), `.${basename(path)}`);
  try {
    await rename(path, hidden);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      await rm(hidden, { recursive: true, force: true });
      return;
    }
    throw err;
  }
  await rm(hidden, { recursive: true, force: true });
}

/** Unmount the rootfs (the shim normally has), then remove work dir and bundle. */
export async function deleteBundle(b: Bundle, sys: Syscalls = realSyscalls): Promise<void> {
  await atomicDelete(b.workDir);
  const rootfs = join(b.path, "rootfs");
  if (existsSync(rootfs)) {
    unmountAll(rootfs, 0, sys);
    await rmdir(rootfs).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "ENOENT") throw err;
    });
  }
  await atomicDelete(b.path);
}
