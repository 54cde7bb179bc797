// containerd.services.snapshots.v1.Info encoded straight from a snapshot's record, for
// Snapshots/Stat and the batches of Snapshots/List, as container-wire.ts does for containers
// (docs/performance.md, finding 19). Field numbers from containerd 1.6's snapshots.proto (as
// generated under src/gen): name 1, parent 2, kind 3 (an enum: its number as a varint),
// created_at 4, updated_at 5, labels 6.
import type { DescMessage } from "@bufbuild/protobuf";
import type { SnapshotInfo } from "../core/snapshots/snapshotter.js";
import type { Kind } from "../gen/containerd/services/snapshots/v1/snapshots_pb.js";
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

function plan(i: SnapshotInfo, kind: Kind) {
  const p = {
    i,
    kind: kind as number,
    nameLen: utf8(i.name),
    parentLen: utf8(i.parent),
    times: timesPlan(i.created, i.updated),
    labels: stringMapPlan(i.labels),
    size: 0,
  };
  p.size =
    stringFieldSize(p.nameLen) +
    stringFieldSize(p.parentLen) +
    varintFieldSize(p.kind) +
    p.times.size +
    stringMapSize(p.labels);
  return p;
}

function write(w: Writer, p: ReturnType<typeof plan>): void {
  w.string(1, p.i.name, p.nameLen);
  w.string(2, p.i.parent, p.parentLen);
  w.uint(3, p.kind);
  writeTimes(w, 4, p.times);
  writeStringMap(w, 6, p.labels);
}

/**
 * A response whose field 1 is the infos (a ListSnapshotsResponse batch; with one info,
 * StatSnapshotResponse), framed for the gRPC wire. `kindOf` maps a record's kind to the enum.
 */
export function infosResponse<O extends DescMessage>(
  infos: readonly SnapshotInfo[],
  kindOf: (i: SnapshotInfo) => Kind,
): EncodedMessage<O> {
  return fieldOneResponse<ReturnType<typeof plan>, O>(
    infos.map((i) => plan(i, kindOf(i))),
    write,
  );
}
