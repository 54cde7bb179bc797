// The native snapshotter: every active snapshot (and every snapshot without a parent) is a full
// copy of its parent's tree in <id>; a view of a parent is a read-only bind of the parent's
// directory. Works on any filesystem, at the cost of copying.
import type { Mount } from "../../base/mount.js";
import { realSyscalls, type Syscalls } from "../../sys/syscalls.js";
import { copyDir } from "./fsutil.js";
import { type LocalOptions, LocalSnapshotter } from "./local.js";
import type { Kind } from "./snapshotter.js";
import type { StoredSnapshot } from "./storage.js";

export interface NativeOptions extends LocalOptions {
  /** The calls that copy device nodes, owners, modes, times and xattrs (default: the kernel's). */
  sys?: Syscalls;
}

export class NativeSnapshotter extends LocalSnapshotter {
  private readonly sys: Syscalls;

  constructor(root: string, opts: NativeOptions = {}) {
    super(root, { ...opts, asyncRemove: false });
    this.sys = opts.sys ?? realSyscalls;
  }

  protected usagePath(id: string): string {
    return this.snapshotDir(id);
  }

  protected needsDir(kind: Kind, parent: string): boolean {
    return kind === "active" || parent === "";
  }

  protected async populate(td: string, _kind: Kind, parentId: string | undefined): Promise<void> {
    this.sys.chmod(td, 0o755);
    if (parentId === undefined) return;
    await copyDir(td, this.snapshotDir(parentId), {
      sys: this.sys,
      // security.* attributes often cannot be set; a snapshot without them is still usable.
      onXattrError: (path, name, err) =>
        this.log.debug("failed to copy xattr", { path, xattr: name, error: String(err) }),
    });
  }

  protected mountsFor(s: StoredSnapshot): Mount[] {
    const source =
      s.parentIds.length === 0 || s.kind === "active"
        ? this.snapshotDir(s.id)
        : this.snapshotDir(s.parentIds[0]!);
    return [{ type: "bind", source, options: ["rbind", s.kind === "view" ? "ro" : "rw"] }];
  }
}
