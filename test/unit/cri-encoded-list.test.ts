// CRI list responses laid out from cached per-record encodings decode to exactly what the
// generic encoder would send, and a record's item is encoded again when its state changes.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { EncodedItems } from "../../src/cri/encoded-list.js";
import {
  type Container,
  ContainerSchema,
  ContainerState,
  ListContainersResponseSchema,
} from "../../src/gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";

interface Rec {
  id: string;
  state: ContainerState;
  labels: Record<string, string>;
}

const item = (r: Rec): Container =>
  create(ContainerSchema, {
    id: r.id,
    metadata: { name: `n-${r.id}`, attempt: 1 },
    state: r.state,
    createdAt: 1_700_000_000_000_000_000n,
    // a long value makes an item longer than 127 bytes: a two-byte length prefix
    labels: r.labels,
  });

describe("CRI encoded list responses", () => {
  it("decode to the same message the generic encoder gives, in order", () => {
    let encodings = 0;
    const items = new EncodedItems(
      ContainerSchema,
      (r: Rec) => {
        encodings++;
        return item(r);
      },
      (r) => String(r.state),
    );
    const recs: Rec[] = [
      { id: "a", state: ContainerState.CONTAINER_CREATED, labels: { k: "v" } },
      { id: "b", state: ContainerState.CONTAINER_RUNNING, labels: { long: "x".repeat(300) } },
      { id: "c", state: ContainerState.CONTAINER_EXITED, labels: {} },
    ];
    const expected = toBinary(
      ListContainersResponseSchema,
      create(ListContainersResponseSchema, { containers: recs.map(item) }),
    );
    const got = items.response(recs).body;
    assert.deepEqual(Buffer.from(got), Buffer.from(expected));
    assert.equal(fromBinary(ListContainersResponseSchema, got).containers[1]!.labels.long, "x".repeat(300));
    assert.equal(encodings, 3);

    items.response(recs);
    assert.equal(encodings, 3, "unchanged records reuse their encoding");
    recs[0]!.state = ContainerState.CONTAINER_RUNNING;
    const after = fromBinary(ListContainersResponseSchema, items.response(recs).body);
    assert.equal(encodings, 4, "a changed state encodes that record again");
    assert.equal(after.containers[0]!.state, ContainerState.CONTAINER_RUNNING);
    assert.equal(items.response([]).body.length, 0);
  });
});
