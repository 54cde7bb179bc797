// The Snapshots gRPC service: a thin adapter over the namespaced snapshots layer.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { EmptySchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Mount } from "../base/mount.js";
import type { SnapshotService } from "../core/snapshots/metadata.js";
import type { Kind as CoreKind, SnapshotInfo } from "../core/snapshots/snapshotter.js";
import {
  type InfoSchema,
  Kind,
  type Snapshots,
} from "../gen/containerd/services/snapshots/v1/snapshots_pb.js";
import type { MountSchema } from "../gen/containerd/types/mount_pb.js";
import type { ServiceImpl } from "../grpc/service.js";
import { infosResponse } from "./snapshot-wire.js";

/** Infos per List message, as containerd batches them. */
const LIST_BATCH = 100;

const KIND: Record<CoreKind, Kind> = { view: Kind.VIEW, active: Kind.ACTIVE, committed: Kind.COMMITTED };

const kindOf = (i: SnapshotInfo) => KIND[i.kind];

export function infoToProto(i: SnapshotInfo): MessageInitShape<typeof InfoSchema> {
  return {
    name: i.name,
    parent: i.parent,
    kind: KIND[i.kind],
    createdAt: timestampFromDate(i.created),
    updatedAt: timestampFromDate(i.updated),
    labels: i.labels,
  };
}

export function mountsToProto(ms: Mount[]): MessageInitShape<typeof MountSchema>[] {
  return ms.map((m) => ({ type: m.type, source: m.source, target: m.target ?? "", options: m.options }));
}

export function snapshotsService(svc: SnapshotService): ServiceImpl<typeof Snapshots> {
  return {
    async prepare(req, ctx) {
      const sn = svc.get(req.snapshotter);
      const ns = ctx.namespace();
      return {
        mounts: mountsToProto(await sn.prepare(ns, req.key, req.parent, req.labels, { lease: ctx.lease() })),
      };
    },
    async view(req, ctx) {
      const sn = svc.get(req.snapshotter);
      const ns = ctx.namespace();
      return {
        mounts: mountsToProto(await sn.view(ns, req.key, req.parent, req.labels, { lease: ctx.lease() })),
      };
    },
    async mounts(req, ctx) {
      const sn = svc.get(req.snapshotter);
      return { mounts: mountsToProto(await sn.mounts(ctx.namespace(), req.key)) };
    },
    async commit(req, ctx) {
      const sn = svc.get(req.snapshotter);
      await sn.commit(ctx.namespace(), req.name, req.key, req.labels, { lease: ctx.lease() });
      return create(EmptySchema);
    },
    async remove(req, ctx) {
      const sn = svc.get(req.snapshotter);
      await sn.remove(ctx.namespace(), req.key, { lease: ctx.lease() });
      return create(EmptySchema);
    },
    async stat(req, ctx) {
      const sn = svc.get(req.snapshotter);
      return infosResponse([await sn.stat(ctx.namespace(), req.key)], kindOf);
    },
    async update(req, ctx) {
      const sn = svc.get(req.snapshotter);
      const info = { name: req.info?.name ?? "", labels: req.info?.labels ?? {} };
      return { info: infoToProto(await sn.update(ctx.namespace(), info, req.updateMask?.paths ?? [])) };
    },
    async *list(req, ctx) {
      const sn = svc.get(req.snapshotter);
      const infos = await sn.list(ctx.namespace(), req.filters);
      for (let i = 0; i < infos.length; i += LIST_BATCH) {
        yield infosResponse(infos.slice(i, i + LIST_BATCH), kindOf);
      }
    },
    async usage(req, ctx) {
      const sn = svc.get(req.snapshotter);
      const u = await sn.usage(ctx.namespace(), req.key);
      return { size: BigInt(u.size), inodes: BigInt(u.inodes) };
    },
    async cleanup(req) {
      const sn = svc.get(req.snapshotter);
      await sn.cleanup();
      return create(EmptySchema);
    },
  };
}
