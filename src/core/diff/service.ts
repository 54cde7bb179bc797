// The diff service's local implementation: differs in configured order; the first that does not
// answer NotImplemented decides (containerd's services/diff "local").
import { isKind } from "../../base/errdefs.js";
import type { Mount } from "../../base/mount.js";
import type { Labels } from "../metadata/db.js";
import type { ApplyOpts, CompareOpts, Descriptor } from "./walking.js";

/** A differ: applies layers onto mounts and computes layers from mounts. */
export interface Differ {
  apply(ns: string, desc: Descriptor, mounts: Mount[], opts?: ApplyOpts): Promise<Descriptor>;
  compare(ns: string, lower: Mount[], upper: Mount[], opts?: CompareOpts): Promise<Descriptor>;
}

export interface DiffRequestOpts {
  mediaType?: string;
  ref?: string;
  labels?: Labels;
  sourceDateEpoch?: Date;
  lease?: string;
  signal?: AbortSignal;
}

export class DiffService implements Differ {
  constructor(private readonly differs: Differ[]) {
    if (differs.length === 0) throw new Error("diff service: no differs configured");
  }

  async apply(ns: string, desc: Descriptor, mounts: Mount[], opts: ApplyOpts = {}): Promise<Descriptor> {
    let last: unknown;
    for (const d of this.differs) {
      try {
        return await d.apply(ns, desc, mounts, opts);
      } catch (err) {
        if (!isKind(err, "not implemented")) throw err;
        last = err;
      }
    }
    throw last;
  }

  async compare(ns: string, lower: Mount[], upper: Mount[], opts: DiffRequestOpts = {}): Promise<Descriptor> {
    let last: unknown;
    for (const d of this.differs) {
      try {
        return await d.compare(ns, lower, upper, opts);
      } catch (err) {
        if (!isKind(err, "not implemented")) throw err;
        last = err;
      }
    }
    throw last;
  }
}
