// The Images gRPC service: a thin adapter over the namespaced image store, with the checks and
// messages containerd's images service makes before its store sees a request.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { EmptySchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { BerthError } from "../base/errdefs.js";
import type { Image, ImageInput, ImageStore } from "../core/images/store.js";
import type {
  Image as ImagePb,
  ImageSchema,
  Images,
} from "../gen/containerd/services/images/v1/images_pb.js";
import { keptAnswer } from "../grpc/proto-writer.js";
import type { ServiceImpl } from "../grpc/service.js";
import { imagesResponse } from "./image-wire.js";

export function imageToProto(i: Image): MessageInitShape<typeof ImageSchema> {
  return {
    name: i.name,
    labels: i.labels,
    target: {
      mediaType: i.target.mediaType,
      digest: i.target.digest,
      size: BigInt(i.target.size),
      annotations: i.target.annotations,
    },
    createdAt: timestampFromDate(i.createdAt),
    updatedAt: timestampFromDate(i.updatedAt),
  };
}

function imageFromProto(i: ImagePb | undefined): ImageInput {
  const t = i?.target;
  return {
    name: i?.name ?? "",
    labels: { ...(i?.labels ?? {}) },
    target: {
      mediaType: t?.mediaType ?? "",
      digest: t?.digest ?? "",
      size: Number(t?.size ?? 0n),
      annotations: { ...(t?.annotations ?? {}) },
    },
  };
}

/** containerd answers a missing name with a bare status message (no ": invalid argument"). */
function nameRequired(): BerthError {
  const err = new BerthError("invalid argument");
  err.message = "Image.Name required";
  return err;
}

export function imagesService(store: ImageStore): ServiceImpl<typeof Images> {
  return {
    // both answers have the records as their field 1: the items the store keeps with each row
    // where it has them, else encoded from the records directly (image-wire.ts)
    get(req, ctx) {
      const ns = ctx.namespace();
      const item = store.getEncoded(ns, req.name);
      return item ? keptAnswer([item]) : imagesResponse([store.get(ns, req.name)]);
    },
    list(req, ctx) {
      const ns = ctx.namespace();
      const items = req.filters.length === 0 ? store.listEncoded(ns) : null;
      return items ? keptAnswer(items) : imagesResponse(store.list(ns, req.filters));
    },
    create(req, ctx) {
      if (!req.image?.name) throw nameRequired();
      return { image: imageToProto(store.create(ctx.namespace(), imageFromProto(req.image))) };
    },
    update(req, ctx) {
      if (!req.image?.name) throw nameRequired();
      const paths = req.updateMask?.paths ?? [];
      return { image: imageToProto(store.update(ctx.namespace(), imageFromProto(req.image), paths)) };
    },
    async delete(req, ctx) {
      await store.delete(ctx.namespace(), req.name, {
        sync: req.sync,
        target: req.target ? { digest: req.target.digest } : undefined,
      });
      return create(EmptySchema);
    },
  };
}
