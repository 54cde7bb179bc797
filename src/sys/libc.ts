// The one place berth calls into libc (koffi). Functions are bound lazily so that code paths
// which never need a syscall never load the FFI.
import koffi from "koffi";

let lib: koffi.IKoffiLib | undefined;
const fns = new Map<string, koffi.KoffiFunction>();

export function libc(name: string, signature: string): koffi.KoffiFunction {
  let f = fns.get(name);
  if (!f) {
    lib ??= koffi.load("libc.so.6");
    f = lib.func(signature);
    fns.set(name, f);
  }
  return f;
}

/** errno of the last failed call on this thread, as a Node-style code name when known. */
export function lastErrno(): number {
  return koffi.errno();
}
