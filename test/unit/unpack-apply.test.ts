// The unpacker (src/core/unpack/unpacker.ts) over an in-memory snapshotter: missing chains are
// prepared on their parent under an extract key, applied, checked and committed as the chain ID;
// existing chains are skipped; a wrong diff ID leaves nothing behind; a chain committed by someone
// else meanwhile is accepted; the layers and config get the labels a pull sets.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { errAlreadyExists, errNotFound } from "../../src/base/errdefs.js";
import type { Mount } from "../../src/base/mount.js";
import { chainIds } from "../../src/core/images/image.js";
import type { Descriptor } from "../../src/core/images/media.js";
import { applyLayers, type LayerSnapshots, unpackImage } from "../../src/core/unpack/unpacker.js";

const D = (c: string) => `sha256:${c.repeat(64)}`;

/** Snapshots in a map: committed names and active keys, with each call recorded. */
class MemSnapshots implements LayerSnapshots {
  readonly committed = new Map<string, string>(); // name → parent
  readonly active = new Map<string, string>(); // key → parent
  readonly calls: string[] = [];
  /** Names someone else commits just before our commit. */
  raced = new Set<string>();
  async exists(key: string): Promise<boolean> {
    return this.committed.has(key);
  }
  async prepare(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    this.calls.push(
      `prepare ${key.split(" ")[1]} on ${parent || "-"} ref=${labels["containerd.io/snapshot.ref"]}`,
    );
    assert.match(key, /^extract-\d+-\S+ sha256:/);
    if (parent && !this.committed.has(parent)) throw errNotFound(`parent ${parent}`);
    this.active.set(key, parent);
    return [{ type: "bind", source: `/snap/${key}`, options: ["rw"] }];
  }
  async commit(name: string, key: string): Promise<void> {
    this.calls.push(`commit ${name}`);
    if (this.raced.has(name)) this.committed.set(name, this.active.get(key)!);
    if (this.committed.has(name)) throw errAlreadyExists(`snapshot ${name}`);
    this.committed.set(name, this.active.get(key)!);
    this.active.delete(key);
  }
  async remove(key: string): Promise<void> {
    this.calls.push(`remove ${key.split(" ")[1]}`);
    this.active.delete(key);
  }
}

const layers: Descriptor[] = ["1", "2", "3"].map((c) => ({
  mediaType: "application/vnd.oci.image.layer.v1.tar",
  digest: D(c),
  size: 1,
}));
const diffIds = [D("a"), D("b"), D("c")];
const chain = chainIds(diffIds);
/** Applies a layer by answering its diff ID (the one for layer `i` is diffIds[i]). */
const applier =
  (wrong?: string) =>
  async (l: Descriptor, mounts: Mount[]): Promise<string> => {
    assert.equal(mounts.length, 1);
    return l.digest === wrong ? D("f") : diffIds[layers.indexOf(l)]!;
  };

describe("unpacker", () => {
  it("applies the missing chains on their parents and labels like a pull", async () => {
    const sn = new MemSnapshots();
    sn.committed.set(chain[0]!, "");
    const labels: string[] = [];
    const top = await unpackImage(
      sn,
      applier(),
      (d, l) => {
        labels.push(`${d.slice(7, 8)} ${Object.entries(l).flat().join("=")}`);
      },
      { configDigest: D("9"), layers, diffIds },
      "overlayfs",
    );
    assert.equal(top, chain[2]);
    assert.deepEqual(sn.calls, [
      `prepare ${chain[1]} on ${chain[0]} ref=${chain[1]}`,
      `commit ${chain[1]}`,
      `prepare ${chain[2]} on ${chain[1]} ref=${chain[2]}`,
      `commit ${chain[2]}`,
    ]);
    assert.equal(sn.active.size, 0);
    assert.deepEqual(labels, [
      `1 containerd.io/uncompressed=${diffIds[0]}`,
      `2 containerd.io/uncompressed=${diffIds[1]}`,
      `3 containerd.io/uncompressed=${diffIds[2]}`,
      `9 containerd.io/gc.ref.snapshot.overlayfs=${chain[2]}`,
    ]);
  });

  it("fails on a wrong diff ID and removes the active snapshot", async () => {
    const sn = new MemSnapshots();
    await assert.rejects(
      applyLayers(sn, applier(D("2")), layers, diffIds),
      new RegExp(`wrong diff id calculated on extraction "${diffIds[1]}": got ${D("f")}`),
    );
    assert.deepEqual([...sn.committed.keys()], [chain[0]]);
    assert.equal(sn.active.size, 0);
    assert.equal(sn.calls.at(-1), `remove ${chain[1]}`);
  });

  it("accepts a chain committed meanwhile by another unpack", async () => {
    const sn = new MemSnapshots();
    sn.raced.add(chain[1]!);
    assert.deepEqual(await applyLayers(sn, applier(), layers, diffIds), chain);
    assert.deepEqual([...sn.committed.keys()].sort(), [...chain].sort());
    assert.equal(sn.active.size, 0, "the raced extract snapshot is removed");
  });

  it("refuses diff IDs that do not match the layers", async () => {
    await assert.rejects(applyLayers(new MemSnapshots(), applier(), layers, diffIds.slice(1)), /mismatched/);
  });
});
