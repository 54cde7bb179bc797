// containerd.services.diff.v1.Diff over the local diff service.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { errInvalidArgument } from "../base/errdefs.js";
import type { Mount } from "../base/mount.js";
import type { DiffService } from "../core/diff/service.js";
import type { Descriptor } from "../core/diff/walking.js";
import type { Diff } from "../gen/containerd/services/diff/v1/diff_pb.js";
import type { Descriptor as PbDescriptor } from "../gen/containerd/types/descriptor_pb.js";
import type { Mount as PbMount } from "../gen/containerd/types/mount_pb.js";
import type { ServiceImpl } from "../grpc/service.js";

const toMounts = (ms: PbMount[]): Mount[] =>
  ms.map((m) => ({ type: m.type, source: m.source, target: m.target, options: [...m.options] }));

function toDescriptor(d: PbDescriptor): Descriptor {
  return {
    mediaType: d.mediaType,
    digest: d.digest,
    size: Number(d.size),
    annotations: { ...d.annotations },
  };
}

function fromDescriptor(d: Descriptor) {
  return { mediaType: d.mediaType, digest: d.digest, size: BigInt(d.size), annotations: d.annotations ?? {} };
}

export function diffService(svc: DiffService): ServiceImpl<typeof Diff> {
  return {
    async apply(req, ctx) {
      if (!req.diff) throw errInvalidArgument("diff descriptor must be set");
      const applied = await svc.apply(ctx.namespace(), toDescriptor(req.diff), toMounts(req.mounts), {
        syncFs: req.syncFs,
        signal: ctx.signal,
      });
      return { applied: fromDescriptor(applied) };
    },
    async diff(req, ctx) {
      const d = await svc.compare(ctx.namespace(), toMounts(req.left), toMounts(req.right), {
        mediaType: req.mediaType,
        ref: req.ref,
        labels: req.labels,
        sourceDateEpoch: req.sourceDateEpoch ? timestampDate(req.sourceDateEpoch) : undefined,
        lease: ctx.lease(),
        signal: ctx.signal,
      });
      return { diff: fromDescriptor(d) };
    },
  };
}
