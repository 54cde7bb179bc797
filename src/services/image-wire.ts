// containerd.services.images.v1.Image encoded straight from an image record, for Images/Get and
// Images/List, as container-wire.ts does for containers: the generic encoder is a lot of code
// for a small record, and a list call runs it cold (docs/performance.md, findings 4 and 19).
// Field numbers from containerd 1.6's images.proto and descriptor.proto (as generated under
// src/gen): name 1, labels 2, target 3 (media_type 1, digest 2, size 3, annotations 5),
// created_at 7, updated_at 8.
import type { DescMessage } from "@bufbuild/protobuf";
import type { Image } from "../core/images/store.js";
import type { EncodedMessage } from "../grpc/handlers.js";
import {
  fieldOneItem,
  fieldOneResponse,
  fieldSize,
  stringFieldSize,
  stringMapPlan,
  stringMapSize,
  timesPlan,
  utf8,
  varintFieldSize,
  type Writer,
  writeStringMap,
  writeTimes,
} from "../grpc/proto-writer.js";

function plan(i: Image) {
  const t = i.target;
  const annotations = stringMapPlan(t.annotations ?? {});
  const mediaTypeLen = utf8(t.mediaType);
  const digestLen = utf8(t.digest);
  const targetSize =
    stringFieldSize(mediaTypeLen) +
    stringFieldSize(digestLen) +
    varintFieldSize(t.size) +
    stringMapSize(annotations);
  const p = {
    i,
    nameLen: utf8(i.name),
    labels: stringMapPlan(i.labels),
    mediaTypeLen,
    digestLen,
    annotations,
    targetSize,
    times: timesPlan(i.createdAt, i.updatedAt),
    size: 0,
  };
  p.size = stringFieldSize(p.nameLen) + stringMapSize(p.labels) + fieldSize(targetSize) + p.times.size;
  return p;
}

function write(w: Writer, p: ReturnType<typeof plan>): void {
  const i = p.i;
  w.string(1, i.name, p.nameLen);
  writeStringMap(w, 2, p.labels);
  w.open(3, p.targetSize);
  w.string(1, i.target.mediaType, p.mediaTypeLen);
  w.string(2, i.target.digest, p.digestLen);
  w.uint(3, i.target.size);
  writeStringMap(w, 5, p.annotations);
  writeTimes(w, 7, p.times);
}

/** A response whose field 1 is the images (ListImagesResponse; with one, GetImageResponse). */
export function imagesResponse<O extends DescMessage>(images: readonly Image[]): EncodedMessage<O> {
  return fieldOneResponse<ReturnType<typeof plan>, O>(images.map(plan), write);
}

/**
 * An image record as field 1 of an answer (GetImageResponse, ListImagesResponse): what the store
 * keeps with each row (ImageStore's `encode`), so that answers are the kept items as they are.
 */
export function imageItem(i: Image): Buffer {
  return fieldOneItem(plan(i), write);
}
