// The snapshot plugins in the plugin graph: which load, which skip and why, config keys, and the
// service over every loaded snapshotter. Needs root (overlay check).
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { nopLogger } from "../../src/base/log.js";
import { type Plugin, PluginSet, pluginKey } from "../../src/base/plugin.js";
import type { SnapshotService } from "../../src/core/snapshots/metadata.js";
import type { OverlaySnapshotter } from "../../src/core/snapshots/overlay.js";
import { contentPlugin } from "../../src/plugins/content.js";
import { corePlugins } from "../../src/plugins/core.js";
import {
  filesystemOf,
  snapshotPlugins,
  snapshotsGrpcPlugin,
  snapshotsServicePlugin,
} from "../../src/plugins/snapshots.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

let dir: string;

async function load(config: Record<string, Record<string, unknown>> = {}): Promise<PluginSet> {
  const set = new PluginSet();
  const plugins: Plugin[] = [
    contentPlugin,
    ...corePlugins,
    ...snapshotPlugins,
    snapshotsServicePlugin,
    snapshotsGrpcPlugin,
  ];
  await set.init(plugins, {
    daemon: {
      root: join(dir, "root"),
      state: join(dir, "state"),
      address: join(dir, "sock"),
      ttrpcAddress: join(dir, "sock.ttrpc"),
      version: "test",
      revision: "test",
    },
    disabled: [],
    required: [],
    configFor: (p) => ({ ...(p.defaults?.() as object), ...config[pluginKey(p.type, p.id)] }),
    log: nopLogger,
  });
  return set;
}

describe("snapshot plugins", () => {
  before(async () => {
    dir = await makeTempDir("snap-plugins");
  });
  after(async () => {
    await removeTempDir(dir);
  });

  it("load overlayfs and native; skip btrfs, zfs, aufs, devmapper with the reason", async () => {
    const set = await load();
    try {
      const status = (id: string) => set.find("io.containerd.snapshotter.v1", id)!.status;
      assert.deepEqual(status("overlayfs"), { state: "ok" });
      assert.deepEqual(status("native"), { state: "ok" });
      const root = join(dir, "root");
      const fstype = filesystemOf(root);
      assert.deepEqual(status("btrfs"), {
        state: "skip",
        reason: `path ${root}/io.containerd.snapshotter.v1.btrfs (${fstype}) must be a btrfs filesystem to be used with the btrfs snapshotter: skip plugin`,
      });
      assert.deepEqual(status("zfs"), {
        state: "skip",
        reason: `path ${root}/io.containerd.snapshotter.v1.zfs must be a zfs filesystem to be used with the zfs snapshotter: skip plugin`,
      });
      assert.deepEqual(status("aufs"), { state: "skip", reason: "aufs is not supported: skip plugin" });
      assert.deepEqual(status("devmapper"), {
        state: "skip",
        reason: "devmapper not configured: skip plugin",
      });
      const overlay = set.find("io.containerd.snapshotter.v1", "overlayfs")!;
      assert.equal(overlay.meta.exports["root"], `${root}/io.containerd.snapshotter.v1.overlayfs`);
      assert.equal(overlay.meta.platforms.length, 1);
      assert.deepEqual(set.find("io.containerd.service.v1", "snapshots-service")!.status, { state: "ok" });
      assert.deepEqual(set.find("io.containerd.grpc.v1", "snapshots")!.status, { state: "ok" });
      const svc = set.instance<SnapshotService>("io.containerd.service.v1", "snapshots-service");
      assert.deepEqual(svc.names().sort(), ["native", "overlayfs"]);
      const mounts = await svc.get("overlayfs").prepare("default", "k", "");
      assert.equal(mounts[0]!.source, `${root}/io.containerd.snapshotter.v1.overlayfs/snapshots/1/fs`);
    } finally {
      await set.close();
    }
  });

  it("honours root_path, mount_options and sync_remove", async () => {
    const custom = join(dir, "custom-overlay");
    const set = await load({
      "io.containerd.snapshotter.v1.overlayfs": {
        root_path: custom,
        mount_options: ["metacopy=off"],
        sync_remove: true,
      },
    });
    try {
      const sn = set.instance<OverlaySnapshotter>("io.containerd.snapshotter.v1", "overlayfs");
      assert.equal(sn.root, custom);
      assert.equal(sn.options[0], "metacopy=off");
      assert.equal(set.find("io.containerd.snapshotter.v1", "overlayfs")!.meta.exports["root"], custom);
    } finally {
      await set.close();
    }
  });

  it("declares containerd's config keys", () => {
    const defaults = Object.fromEntries(snapshotPlugins.map((p) => [p.id, p.defaults?.()]));
    assert.deepEqual(defaults["overlayfs"], {
      root_path: "",
      upperdir_label: false,
      sync_remove: false,
      mount_options: [],
    });
    assert.deepEqual(defaults["native"], { root_path: "" });
    assert.deepEqual(Object.keys(defaults["devmapper"] as object).sort(), [
      "async_remove",
      "base_image_size",
      "discard_blocks",
      "fs_options",
      "fs_type",
      "pool_name",
      "root_path",
    ]);
  });
});
