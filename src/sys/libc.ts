// The one place berth calls into libc (koffi). Functions are bound lazily so that code paths
// which never need a syscall never load the FFI.
import { createRequire } from "node:module";
import { constants } from "node:os";
import { dirname, join } from "node:path";
import type * as koffiTypes from "koffi";
import type koffiModule from "koffi";

const requireNative = createRequire(import.meta.url);

/**
 * koffi's entry (index.js) finds its native module with the help of its bundled installer, whose
 * code loads node:https, node:zlib and their dependencies: ~55 built-in modules and ~20 ms in
 * every process and thread that uses the FFI. The native module is the whole API (the entry only
 * adds deprecated aliases berth does not use), so it is loaded directly when the prebuilt for
 * this platform is where koffi ships it and of the same version; otherwise through the entry.
 */
function loadKoffi(): typeof koffiModule {
  try {
    const pkgFile = requireNative.resolve("koffi/package.json");
    const native = requireNative(
      join(dirname(pkgFile), "build", "koffi", `${process.platform}_${process.arch}`, "koffi.node"),
    ) as typeof koffiModule & { version?: string };
    if (native.version === (requireNative(pkgFile) as { version: string }).version) return native;
  } catch {
    // another layout or platform: the entry knows
  }
  return requireNative("koffi") as typeof koffiModule;
}

let koffi: typeof koffiModule | undefined;
const ffi = (): typeof koffiModule => (koffi ??= loadKoffi());

let lib: koffiTypes.IKoffiLib | undefined;
const fns = new Map<string, koffiTypes.KoffiFunction>();

export function libc(name: string, signature: string): koffiTypes.KoffiFunction {
  let f = fns.get(name);
  if (!f) {
    lib ??= ffi().load("libc.so.6");
    f = lib.func(signature);
    fns.set(name, f);
  }
  return f;
}

/** errno of the last failed call on this thread, as a Node-style code name when known. */
export function lastErrno(): number {
  return ffi().errno();
}

/** An errno's name as Node spells it (ENOENT, EADDRINUSE, …), or `errno N`. */
export function errnoName(errno: number): string {
  return Object.entries(constants.errno).find(([, n]) => n === errno)?.[0] ?? `errno ${errno}`;
}
