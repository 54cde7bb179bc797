// The overlayfs snapshotter: each snapshot is an overlay upper directory (<id>/fs) with its work
// directory (<id>/work, active snapshots only); a snapshot's view of the filesystem is its own
// fs stacked on its parents' (lowerdir=<parent fs>:<grandparent fs>:…).
//
// Mount shapes, as containerd's overlay snapshotter returns them:
//   no parent                → bind <fs> [rw|ro, rbind]
//   active with parents      → overlay [<mount_options>…, workdir=, upperdir=, lowerdir=a:b:…]
//   view with one parent     → bind <parent fs> [ro, rbind]
//   view with more parents   → overlay [<mount_options>…, lowerdir=a:b:…]
// The lowerdir list is never cut short: mounting it (src/core/mount) falls back to the new
// mount API when the option string does not fit mount(2)'s one page.
import { existsSync, lstatSync, mkdirSync, readFileSync, statfsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Mount } from "../../base/mount.js";
import { realSyscalls, type Syscalls } from "../../sys/syscalls.js";
import type { Labels } from "../metadata/db.js";
import { mountOne, unmountAll } from "../mount/mount.js";
import { type LocalOptions, LocalSnapshotter } from "./local.js";
import type { Kind } from "./snapshotter.js";
import type { StoredSnapshot } from "./storage.js";

/** Label carrying a snapshot's upper directory, when upperdir_label is set. */
export const UPPERDIR_LABEL = "containerd.io/snapshot/overlay.upperdir";

export interface OverlayOptions extends LocalOptions {
  upperdirLabel?: boolean;
  /** Options added to every overlay mount (not to bind mounts). */
  mountOptions?: string[];
  /** The calls that change ownership (default: the kernel's). */
  sys?: Syscalls;
}

const TMPFS_MAGIC = 0x01021994;

function hasOption(options: string[], key: string): boolean {
  return options.some((o) => o === key || o.startsWith(`${key}=`));
}

/** True when this process runs in a user namespace other than the initial one. */
function inUserNamespace(): boolean {
  try {
    const map = readFileSync("/proc/self/uid_map", "utf8").trim().split(/\s+/);
    return !(map[0] === "0" && map[1] === "0" && map[2] === "4294967295");
  } catch {
    return false;
  }
}

/**
 * Overlay inside a user namespace (kernel ≥ 5.11) must keep its metadata in user.* xattrs,
 * except on tmpfs, which does not allow them.
 */
function needsUserXattr(root: string): boolean {
  if (!inUserNamespace()) return false;
  try {
    return Number(statfsSync(root).type) !== TMPFS_MAGIC;
  } catch {
    return false;
  }
}

/** The default overlay options: configured ones, then userxattr and index=off when applicable. */
export function overlayMountOptions(root: string, configured: string[] = []): string[] {
  const options = [...configured];
  if (!options.includes("userxattr") && needsUserXattr(root)) options.push("userxattr");
  // With the index feature on, overlay refuses lower layers that were used with another upper.
  if (!hasOption(options, "index") && existsSync("/sys/module/overlay/parameters/index"))
    options.push("index=off");
  return options;
}

/**
 * Check that overlay works under root: the filesystem reports d_type, and an overlay with two
 * lower layers, an upper and a work directory mounts. Throws the reason when not.
 */
export async function checkOverlaySupport(root: string, sys: Syscalls = realSyscalls): Promise<void> {
  await mkdir(root, { recursive: true, mode: 0o700 });
  const td = await mkdtemp(join(root, "overlay-check-"));
  try {
    await writeFile(join(td, "probe"), "");
    if (!sys.supportsDType(td))
      throw new Error(
        `${root} does not support d_type. If the backing filesystem is xfs, please reformat with ftype=1 to enable d_type support`,
      );
    for (const d of ["lower1", "lower2", "upper", "work", "merged"]) await mkdir(join(td, d));
    const merged = join(td, "merged");
    try {
      mountOne(
        {
          type: "overlay",
          source: "overlay",
          options: [
            `lowerdir=${join(td, "lower2")}:${join(td, "lower1")}`,
            `upperdir=${join(td, "upper")}`,
            `workdir=${join(td, "work")}`,
          ],
        },
        merged,
        sys,
      );
    } catch (err) {
      throw new Error(`failed to mount overlay: ${(err as Error).message}`);
    }
    unmountAll(merged, 0, sys);
  } finally {
    await rm(td, { recursive: true, force: true });
  }
}

export class OverlaySnapshotter extends LocalSnapshotter {
  /** A staged tree renamed over a new snapshot's upper directory is its content. */
  readonly stagedExtraction = this;
  readonly options: string[];
  private readonly upperdirLabel: boolean;
  private readonly sys: Syscalls;

  constructor(root: string, opts: OverlayOptions = {}) {
    super(root, opts);
    this.upperdirLabel = opts.upperdirLabel ?? false;
    this.sys = opts.sys ?? realSyscalls;
    this.options = overlayMountOptions(root, opts.mountOptions);
  }

  upperPath(id: string): string {
    return join(this.snapshotsDir, id, "fs");
  }

  workPath(id: string): string {
    return join(this.snapshotsDir, id, "work");
  }

  protected usagePath(id: string): string {
    return this.upperPath(id);
  }

  protected needsDir(): boolean {
    return true;
  }

  protected async populate(td: string, kind: Kind, parentId: string | undefined): Promise<void> {
    // A few metadata calls that take microseconds: done in place, not queued on the thread pool
    // behind whatever else is in flight (that queue is what made Prepare slow under load).
    const fs = join(td, "fs");
    mkdirSync(fs, { mode: 0o755 });
    if (kind === "active") mkdirSync(join(td, "work"), { mode: 0o711 });
    if (parentId !== undefined) {
      // The new upper dir takes its owner from the parent's, so the merged root keeps it.
      const st = lstatSync(this.upperPath(parentId));
      this.sys.lchown(fs, st.uid, st.gid);
    }
  }

  protected override decorateLabels(id: string, labels: Labels): Labels {
    if (!this.upperdirLabel) return labels;
    return { ...labels, [UPPERDIR_LABEL]: this.upperPath(id) };
  }

  protected mountsFor(s: StoredSnapshot): Mount[] {
    if (s.parentIds.length === 0) {
      return [
        { type: "bind", source: this.upperPath(s.id), options: [s.kind === "view" ? "ro" : "rw", "rbind"] },
      ];
    }
    const options = [...this.options];
    if (s.kind === "active") {
      options.push(`workdir=${this.workPath(s.id)}`, `upperdir=${this.upperPath(s.id)}`);
    } else if (s.parentIds.length === 1) {
      return [{ type: "bind", source: this.upperPath(s.parentIds[0]!), options: ["ro", "rbind"] }];
    }
    options.push(`lowerdir=${s.parentIds.map((id) => this.upperPath(id)).join(":")}`);
    return [{ type: "overlay", source: "overlay", options }];
  }
}
