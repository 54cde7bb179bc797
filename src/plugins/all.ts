// Every plugin berthd registers, in registration order (init order is by dependencies).

import type { Plugin } from "../base/plugin.js";
import { pluginKey } from "../base/plugin.js";
import { berthGcPlugin } from "./berth-gc.js";
import { containersGrpcPlugin, containersServicePlugin } from "./containers.js";
import { contentGrpcPlugin, contentPlugin, contentServicePlugin } from "./content.js";
import { corePlugins } from "./core.js";
import { criPlugin } from "./cri.js";
import { differPlugin, diffGrpcPlugin, diffServicePlugin } from "./diff.js";
import { gcPlugin } from "./gc.js";
import { imagesGrpcPlugin, imagesServicePlugin } from "./images.js";
import { snapshotPlugins, snapshotsGrpcPlugin, snapshotsServicePlugin } from "./snapshots.js";
import { taskPlugins } from "./tasks.js";
import { transferPlugins } from "./transfer.js";

export function allPlugins(): Plugin[] {
  return [
    contentPlugin,
    ...snapshotPlugins,
    ...corePlugins,
    contentServicePlugin,
    snapshotsServicePlugin,
    imagesServicePlugin,
    containersServicePlugin,
    differPlugin,
    diffServicePlugin,
    gcPlugin,
    contentGrpcPlugin,
    snapshotsGrpcPlugin,
    imagesGrpcPlugin,
    containersGrpcPlugin,
    diffGrpcPlugin,
    ...transferPlugins,
    ...taskPlugins,
    criPlugin,
    berthGcPlugin,
  ];
}

/** `<type>.<id>` → defaults, for config loading and `config default`. */
export function pluginDefaults(plugins: Plugin[]): Record<string, Record<string, unknown>> {
  const out: Record<string, Record<string, unknown>> = {};
  for (const p of plugins)
    if (p.defaults) out[pluginKey(p.type, p.id)] = p.defaults() as Record<string, unknown>;
  return out;
}
