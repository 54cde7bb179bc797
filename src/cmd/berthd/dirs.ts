// The root and state directories hold every image, snapshot and bundle on the machine, and bundles
// are what shims and runc execute: a directory another user owns, or anyone may write to, lets that
// user swap a layer or a container's config under berthd. berthd refuses to start on one, naming
// the directory and what is wrong, rather than run on data it cannot trust.
import { statSync } from "node:fs";

/** Throws when `dir` is not owned by this process's user or is writable by others. */
export function checkOwnDir(what: string, dir: string): void {
  const st = statSync(dir);
  const uid = process.getuid?.() ?? 0;
  if (st.uid !== uid)
    throw new Error(
      `${what} directory ${dir} is owned by uid ${st.uid}, not by berthd's uid ${uid}: refusing to start (chown it to ${uid})`,
    );
  if (st.mode & 0o002)
    throw new Error(
      `${what} directory ${dir} is writable by others (mode ${(st.mode & 0o7777).toString(8).padStart(4, "0")}): refusing to start (chmod o-w it)`,
    );
}
