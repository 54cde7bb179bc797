// Snapshot plugins, with containerd's types, ids and config keys:
//   io.containerd.snapshotter.v1.overlayfs      overlay mounts (default snapshotter)
//   io.containerd.snapshotter.v1.native         plain copies, works anywhere
//   io.containerd.snapshotter.v1.{btrfs,zfs,devmapper,aufs}
//                                               registered so config and `plugins ls` read as
//                                               containerd's; they report skip with the reason
//   io.containerd.service.v1.snapshots-service  all snapshotters, namespaced (the metadata layer)
//   io.containerd.grpc.v1.snapshots             the Snapshots gRPC service
import { mkdirSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { hostPlatform } from "../base/platforms.js";
import { type InitContext, type Plugin, SkipPlugin } from "../base/plugin.js";
import { PluginType, ServiceId } from "../base/plugin-types.js";
import type { Exchange } from "../core/events/exchange.js";
import { SnapshotService } from "../core/snapshots/metadata.js";
import { NativeSnapshotter } from "../core/snapshots/native.js";
import { checkOverlaySupport, OverlaySnapshotter } from "../core/snapshots/overlay.js";
import type { Snapshotter } from "../core/snapshots/snapshotter.js";
import { Snapshots } from "../gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { snapshotsService } from "../services/snapshots.js";
import type { Metadata } from "./core.js";
import { type GrpcServicePlugin, registration } from "./grpc.js";

function rootOf(ic: InitContext<{ root_path: string }>): string {
  return ic.config.root_path ? resolve(ic.config.root_path) : ic.root;
}

/** The filesystem type of the mount holding path (longest mount point that is a prefix of it). */
export function filesystemOf(path: string): string {
  const abs = resolve(path);
  let best = "";
  let type = "";
  let info = "";
  try {
    info = readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return "";
  }
  for (const line of info.split("\n")) {
    const fields = line.split(" ");
    const sep = fields.indexOf("-");
    if (fields.length < 5 || sep < 0) continue;
    const mp = fields[4]!.replace(/\\([0-7]{3})/g, (_, o: string) =>
      String.fromCharCode(Number.parseInt(o, 8)),
    );
    const under = mp === "/" || abs === mp || abs.startsWith(`${mp}/`);
    if (under && mp.length >= best.length) {
      best = mp;
      type = fields[sep + 1] ?? "";
    }
  }
  return type;
}

interface OverlayConfig {
  root_path: string;
  upperdir_label: boolean;
  sync_remove: boolean;
  mount_options: string[];
}

export const overlayPlugin: Plugin<OverlayConfig> = {
  type: PluginType.Snapshot,
  id: "overlayfs",
  defaults: () => ({ root_path: "", upperdir_label: false, sync_remove: false, mount_options: [] }),
  async init(ic) {
    ic.meta.platforms.push(hostPlatform());
    const root = rootOf(ic);
    ic.meta.exports["root"] = root;
    try {
      await checkOverlaySupport(root);
    } catch (err) {
      throw new SkipPlugin(`overlayfs snapshotter cannot be used on ${root}: ${(err as Error).message}`);
    }
    const sn = new OverlaySnapshotter(root, {
      asyncRemove: !ic.config.sync_remove,
      upperdirLabel: ic.config.upperdir_label,
      mountOptions: ic.config.mount_options ?? [],
      log: ic.log,
    });
    ic.onClose(() => sn.close());
    return sn;
  },
};

export const nativePlugin: Plugin<{ root_path: string }> = {
  type: PluginType.Snapshot,
  id: "native",
  defaults: () => ({ root_path: "" }),
  init(ic) {
    ic.meta.platforms.push(hostPlatform());
    const sn = new NativeSnapshotter(rootOf(ic), { log: ic.log });
    ic.onClose(() => sn.close());
    return sn;
  },
};

const notImplemented = (id: string) => new SkipPlugin(`the ${id} snapshotter is not implemented by berth`);

export const btrfsPlugin: Plugin<{ root_path: string }> = {
  type: PluginType.Snapshot,
  id: "btrfs",
  defaults: () => ({ root_path: "" }),
  init(ic) {
    ic.meta.platforms.push(hostPlatform());
    const root = rootOf(ic);
    ic.meta.exports["root"] = root;
    mkdirSync(root, { recursive: true, mode: 0o700 });
    const fstype = filesystemOf(root);
    if (fstype !== "btrfs")
      throw new SkipPlugin(
        `path ${root} (${fstype}) must be a btrfs filesystem to be used with the btrfs snapshotter`,
      );
    throw notImplemented("btrfs");
  },
};

export const zfsPlugin: Plugin<{ root_path: string }> = {
  type: PluginType.Snapshot,
  id: "zfs",
  defaults: () => ({ root_path: "" }),
  init(ic) {
    ic.meta.platforms.push(hostPlatform());
    const root = rootOf(ic);
    ic.meta.exports["root"] = root;
    if (filesystemOf(root) !== "zfs")
      throw new SkipPlugin(`path ${root} must be a zfs filesystem to be used with the zfs snapshotter`);
    throw notImplemented("zfs");
  },
};

export const aufsPlugin: Plugin<{ root_path: string }> = {
  type: PluginType.Snapshot,
  id: "aufs",
  defaults: () => ({ root_path: "" }),
  init(ic) {
    ic.meta.platforms.push(hostPlatform());
    ic.meta.exports["root"] = rootOf(ic);
    let filesystems = "";
    try {
      filesystems = readFileSync("/proc/filesystems", "utf8");
    } catch {
      // treated as unsupported
    }
    if (!filesystems.includes("aufs")) throw new SkipPlugin("aufs is not supported");
    throw notImplemented("aufs");
  },
};

interface DevmapperConfig {
  root_path: string;
  pool_name: string;
  base_image_size: string;
  async_remove: boolean;
  discard_blocks: boolean;
  fs_type: string;
  fs_options: string;
}

export const devmapperPlugin: Plugin<DevmapperConfig> = {
  type: PluginType.Snapshot,
  id: "devmapper",
  defaults: () => ({
    root_path: "",
    pool_name: "",
    base_image_size: "",
    async_remove: false,
    discard_blocks: false,
    fs_type: "",
    fs_options: "",
  }),
  init(ic) {
    ic.meta.platforms.push(hostPlatform());
    if (!ic.config.pool_name) throw new SkipPlugin("devmapper not configured");
    throw notImplemented("devmapper");
  },
};

/** Every snapshotter plugin, in containerd's registration order of ids. */
export const snapshotPlugins: Plugin[] = [
  aufsPlugin,
  btrfsPlugin,
  devmapperPlugin,
  nativePlugin,
  overlayPlugin,
  zfsPlugin,
] as Plugin[];

export const snapshotsServicePlugin: Plugin = {
  type: PluginType.Service,
  id: ServiceId.Snapshots,
  requires: [PluginType.Event, PluginType.Metadata, PluginType.Snapshot],
  init(ic): SnapshotService {
    const md = ic.get<Metadata>(PluginType.Metadata, "bolt");
    const svc = new SnapshotService({
      db: md.db,
      namespaces: md.namespaces,
      events: ic.get<Exchange>(PluginType.Event),
      snapshotters: ic.getAll<Snapshotter>(PluginType.Snapshot),
      log: ic.log,
    });
    // Closed before the snapshotters (reverse init order): let background cleanups finish.
    ic.onClose(() => svc.settled());
    return svc;
  },
};

export const snapshotsGrpcPlugin: Plugin = {
  type: PluginType.GRPC,
  id: "snapshots",
  requires: [PluginType.Service],
  init(ic): GrpcServicePlugin {
    const svc = ic.get<SnapshotService>(PluginType.Service, ServiceId.Snapshots);
    return { services: [registration(Snapshots, snapshotsService(svc))] };
  },
};
