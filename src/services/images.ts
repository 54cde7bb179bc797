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
    // records are encoded directly (image-wire.ts); both responses have them as field 1
    get(req, ctx) {
      return imagesResponse([store.get(ctx.namespace(), req.name)]);
    },
    list(req, ctx) {
      return imagesResponse(store.list(ctx.namespace(), req.filters));
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
