// The snapshotter contract (containerd's snapshots.Snapshotter): backends are namespace-free;
// the metadata layer maps per-namespace names to backend keys.

import type { Mount } from "../../base/mount.js";
import type { Labels } from "../metadata/db.js";

/** The label naming the snapshot an unpack's active snapshot becomes (containerd's). */
export const SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref";

export type Kind = "view" | "active" | "committed";

export interface SnapshotInfo {
  /** Key (active/view) or name (committed). */
  name: string;
  /** Name of the committed parent, "" if none. */
  parent: string;
  kind: Kind;
  labels: Labels;
  created: Date;
  updated: Date;
}

export interface Usage {
  /** Bytes used by this snapshot's own layer (not its parents). */
  size: number;
  inodes: number;
}

/**
 * A snapshotter whose snapshots' content is a plain directory (overlay's upper directory) can have
 * a layer extracted apart from any snapshot, into a staging directory on its filesystem, and the
 * tree renamed into a freshly prepared snapshot afterwards: layers then extract in parallel.
 */
export interface StagedExtraction {
  /** A new empty directory on the snapshots' filesystem, left alone by cleanup until released. */
  createStagingDir(): string;
  /** Remove a staging directory (and whatever is still in it). */
  releaseStagingDir(path: string): Promise<void>;
}

export interface Snapshotter {
  /** Present when layers can be staged (see StagedExtraction); absent: apply into the mounts. */
  readonly stagedExtraction?: StagedExtraction;
  stat(key: string): Promise<SnapshotInfo>;
  /** Field paths: "labels", "labels.<k>"; none means labels. */
  update(info: Pick<SnapshotInfo, "name" | "labels">, paths: string[]): Promise<SnapshotInfo>;
  usage(key: string): Promise<Usage>;
  mounts(key: string): Promise<Mount[]>;
  prepare(key: string, parent: string, labels: Labels): Promise<Mount[]>;
  view(key: string, parent: string, labels: Labels): Promise<Mount[]>;
  /**
   * `usage`: the active snapshot's disk usage if the caller measured it; else it is measured when
   * first asked for (usage()), not here.
   */
  commit(name: string, key: string, labels: Labels, usage?: Usage): Promise<void>;
  remove(key: string): Promise<void>;
  /** Every snapshot, in an order where parents come before children. */
  list(): Promise<SnapshotInfo[]>;
  /**
   * Every snapshot's kind and labels by name: all a namespaced list needs of the backend, read
   * without the rest of each record (optional; list() is used without it).
   */
  kinds?(): ReadonlyMap<string, { readonly kind: Kind; readonly labels: Readonly<Labels> }>;
  /** Remove on-disk leftovers of removed snapshots (containerd's Cleanup). */
  cleanup?(): Promise<void>;
  close(): Promise<void>;
}
