// containerd.services.content.v1.Info encoded straight from a blob's record, for Content/Info and
// the batches of Content/List, as container-wire.ts does for containers (docs/performance.md,
// finding 19): a node's content store holds tens of thousands of blobs, and a list ran the
// generic encoder over every one of them. Field numbers from containerd 1.6's content.proto (as
// generated under src/gen): digest 1, size 2 (int64), created_at 3, updated_at 4, labels 5.
import type { DescMessage } from "@bufbuild/protobuf";
import type { Info } from "../core/content/local.js";
import type { EncodedMessage } from "../grpc/handlers.js";
import {
  fieldOneResponse,
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

function plan(i: Info) {
  const p = {
    i,
    digestLen: utf8(i.digest),
    times: timesPlan(i.createdAt, i.updatedAt),
    labels: stringMapPlan(i.labels),
    size: 0,
  };
  p.size = stringFieldSize(p.digestLen) + varintFieldSize(i.size) + p.times.size + stringMapSize(p.labels);
  return p;
}

function write(w: Writer, p: ReturnType<typeof plan>): void {
  w.string(1, p.i.digest, p.digestLen);
  w.uint(2, p.i.size);
  writeTimes(w, 3, p.times);
  writeStringMap(w, 5, p.labels);
}

/** A response whose field 1 is the infos (a ListContentResponse batch; with one, InfoResponse). */
export function contentInfosResponse<O extends DescMessage>(infos: readonly Info[]): EncodedMessage<O> {
  return fieldOneResponse<ReturnType<typeof plan>, O>(infos.map(plan), write);
}
