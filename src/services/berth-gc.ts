// berth.gc.v1.GC: `berth gc why`, `berth gc prune` and `berth check` served by the daemon, which
// alone knows its records, its tasks and what it is writing right now.

import { errInvalidArgument } from "../base/errdefs.js";
import { check } from "../core/gc/check.js";
import type { GcEnv } from "../core/gc/prune.js";
import { prune } from "../core/gc/prune.js";
import { explain, type WhyType } from "../core/gc/why.js";
import type { GC } from "../gen/berth/gc/v1/gc_pb.js";
import type { ServiceImpl } from "../grpc/service.js";

const WHY_TYPES = new Set(["", "content", "snapshot", "image", "lease", "container"]);

export function berthGcService(env: GcEnv): ServiceImpl<typeof GC> {
  return {
    why(req, ctx) {
      if (!req.object) throw errInvalidArgument("object must not be empty");
      if (!WHY_TYPES.has(req.type))
        throw errInvalidArgument(
          `type ${JSON.stringify(req.type)} is not one of content, snapshot, image, lease, container`,
        );
      const a = explain(env.db, {
        namespace: ctx.namespace(),
        object: req.object,
        type: req.type as WhyType | "",
        snapshotter: req.snapshotter,
      });
      return {
        kind: a.kind,
        name: a.name,
        snapshotter: a.snapshotter,
        collectable: a.collectable,
        chains: a.chains,
        notes: a.notes,
      };
    },
    async prune(req) {
      return { orphans: await prune(env, !req.dryRun) };
    },
    async check(req) {
      return await check(env, { verify: !req.skipVerify });
    },
  };
}
