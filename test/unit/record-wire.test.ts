// The Container, Image, snapshot Info and content Info messages encoded by hand from records
// (src/services/container-wire.ts, image-wire.ts, snapshot-wire.ts, content-wire.ts) must decode to exactly what
// the generic encoder makes of the same record, for every shape of record: empty and missing
// fields, multi-byte lengths, non-ASCII text, timestamps past 2^32 s, sizes past 2^32.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, equals, fromBinary } from "@bufbuild/protobuf";
import type { Container } from "../../src/core/containers/store.js";
import type { Info as ContentInfo } from "../../src/core/content/local.js";
import type { Image } from "../../src/core/images/store.js";
import type { SnapshotInfo } from "../../src/core/snapshots/snapshotter.js";
import {
  ContainerSchema,
  GetContainerResponseSchema,
  ListContainersResponseSchema,
} from "../../src/gen/containerd/services/containers/v1/containers_pb.js";
import {
  InfoSchema as ContentInfoSchema,
  InfoResponseSchema,
  ListContentResponseSchema,
} from "../../src/gen/containerd/services/content/v1/content_pb.js";
import {
  GetImageResponseSchema,
  ImageSchema,
  ListImagesResponseSchema,
} from "../../src/gen/containerd/services/images/v1/images_pb.js";
import {
  InfoSchema,
  Kind,
  ListSnapshotsResponseSchema,
  StatSnapshotResponseSchema,
} from "../../src/gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { keptAnswer } from "../../src/grpc/proto-writer.js";
import { FRAME_HEADER } from "../../src/grpc/wire.js";
import {
  containerItem,
  containersResponse,
  containersResponseEach,
} from "../../src/services/container-wire.js";
import { containerToProto } from "../../src/services/containers.js";
import { infoToProto as contentInfoToProto } from "../../src/services/content.js";
import { contentInfosResponse } from "../../src/services/content-wire.js";
import { imageItem, imagesResponse } from "../../src/services/image-wire.js";
import { imageToProto } from "../../src/services/images.js";
import { infosResponse } from "../../src/services/snapshot-wire.js";
import { infoToProto } from "../../src/services/snapshots.js";

const bytes = (n: number, fill = 0x61) => new Uint8Array(n).fill(fill);

const records: Container[] = [
  {
    id: "full",
    labels: { a: "b", "io.kubernetes/ünïcode": "välue ✓", ["k".repeat(300)]: "v".repeat(200) },
    image: "docker.io/library/busybox:latest",
    runtime: {
      name: "io.containerd.runc.v2",
      options: { typeUrl: "containerd.runc.v1.Options", value: bytes(40) },
    },
    spec: { typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec", value: bytes(4096) },
    snapshotter: "overlayfs",
    snapshotKey: "full",
    sandboxId: "",
    extensions: {
      "io.cri-containerd.sandbox.metadata": {
        typeUrl: "github.com/containerd/cri/pkg/store/sandbox/Metadata",
        value: bytes(70_000, 0x7b),
      },
      empty: { typeUrl: "", value: new Uint8Array() },
    },
    createdAt: new Date(1764770000123),
    updatedAt: new Date(7258118400999), // 2200-01-01: seconds above 2^32
  },
  {
    id: "bare",
    labels: {},
    image: "",
    runtime: { name: "" },
    snapshotter: "",
    snapshotKey: "",
    sandboxId: "",
    extensions: {},
    createdAt: new Date(0),
    updatedAt: new Date(1000),
  },
  {
    id: "x".repeat(129),
    labels: { "": "" },
    image: "i",
    runtime: { name: "r", options: { typeUrl: "t", value: new Uint8Array() } },
    spec: { typeUrl: "", value: bytes(1) },
    snapshotter: "native",
    snapshotKey: "k".repeat(16_500),
    sandboxId: "",
    extensions: {},
    createdAt: new Date(999),
    updatedAt: new Date(1764770000000),
  },
];

describe("Container encoded from its record", () => {
  for (const c of records) {
    it(`decodes to what the generic encoder makes of it (${c.id.slice(0, 12)})`, () => {
      const want = create(ContainerSchema, containerToProto(c));
      const one = containersResponse([c]).framed.subarray(FRAME_HEADER);
      const got = fromBinary(GetContainerResponseSchema, one).container!;
      // equals() is protobuf's own comparison; deepEqual shows the difference when there is one
      if (!equals(ContainerSchema, got, want)) {
        assert.deepEqual(got, want);
        assert.fail(`${c.id}: protobuf's equals() sees a difference deepEqual does not`);
      }
    });
  }

  for (const c of records) {
    it(`is kept as field 1 of an answer, a whole Get's body (${c.id.slice(0, 12)})`, () => {
      const get = containersResponse([c]).body;
      const kept = containerItem(c);
      assert.ok(kept.equals(get));
      // field 1's tag (0x0a) and the record's length, then the record
      assert.equal(kept[0], 0x0a);
      assert.ok(keptAnswer([kept]).body.equals(get));
    });
  }

  it("makes Get and List responses of field 1", () => {
    const list = containersResponse(records).framed.subarray(FRAME_HEADER);
    const decoded = fromBinary(ListContainersResponseSchema, list);
    assert.equal(decoded.containers.length, records.length);
    for (const [i, c] of records.entries())
      assert.ok(
        equals(ContainerSchema, decoded.containers[i]!, create(ContainerSchema, containerToProto(c))),
      );
    const get = fromBinary(
      GetContainerResponseSchema,
      containersResponse([records[0]!]).framed.subarray(FRAME_HEADER),
    );
    assert.equal(get.container?.id, "full");
    assert.equal(get.container?.spec?.value.length, 4096);
  });
});

describe("ListContainersResponse encoded in parts as rows come", () => {
  const each = (cs: readonly Container[]) => (fn: (c: Container) => void) => {
    for (const c of cs) fn(c);
  };
  // many records of every shape, so that parts of every size below break between items
  const many = Array.from({ length: 40 }, (_, i) => ({ ...records[i % records.length]!, id: `c-${i}` }));

  for (const partBytes of [1, 100, 5_000, 20_000, 300_000, 1 << 20]) {
    it(`is the one-buffer answer's bytes, in parts of ${partBytes} bytes`, () => {
      const whole = containersResponse(many);
      const parts = containersResponseEach(each(many), partBytes);
      assert.equal(parts.length, whole.length);
      assert.ok(parts.framed.length >= FRAME_HEADER, "the first part keeps the prefix's room");
      assert.ok(
        parts.rest.every((b) => b.length > 0),
        "no empty part",
      );
      assert.ok(parts.body.equals(whole.body), "same bytes as the one-buffer encoding");
      if (partBytes <= 20_000) assert.ok(parts.rest.length > 0, "a small part size splits the answer");
      // an item is never split: a part past the first starts with an item's tag (field 1, bytes)
      for (const b of parts.rest) assert.equal(b[0], 0x0a);
    });
  }

  for (const n of [0, 1, 10, many.length]) {
    it(`is the same answer from ${n} records kept as field-1 items, in parts`, () => {
      const whole = containersResponse(many.slice(0, n));
      const items = many.slice(0, n).map(containerItem);
      // parts as a store reads them: a few items joined in each
      const parts: Buffer[] = [];
      for (let i = 0; i < items.length; i += 3) parts.push(Buffer.concat(items.slice(i, i + 3)));
      const kept = keptAnswer(parts);
      assert.equal(kept.length, whole.length);
      assert.ok(kept.framed.length >= FRAME_HEADER, "the first part keeps the prefix's room");
      assert.ok(kept.body.equals(whole.body), "same bytes as the answer encoded from the records");
      // a large answer is sent as it is read, not copied; a small one is one buffer
      if (n === many.length) assert.ok(kept.length >= 64 << 10, "the whole list is a large answer");
      if (kept.length >= 64 << 10) {
        assert.equal(kept.framed.length, FRAME_HEADER);
        assert.deepEqual(kept.rest, parts);
        assert.ok(kept.rest.every((p, i) => p === parts[i]));
      } else assert.deepEqual(kept.rest, []);
    });
  }

  it("answers an empty list with the prefix's room alone", () => {
    const empty = containersResponseEach(each([]));
    assert.equal(empty.length, 0);
    assert.equal(empty.framed.length, FRAME_HEADER);
    assert.deepEqual(empty.rest, []);
  });
});

const images: Image[] = [
  {
    name: "docker.io/library/busybox:latest",
    labels: { "containerd.io/gc.ref.content": "x", ünï: "✓", ["k".repeat(200)]: "" },
    target: {
      mediaType: "application/vnd.oci.image.index.v1+json",
      digest: `sha256:${"a".repeat(64)}`,
      size: 5_000_000_000,
      annotations: { "org.opencontainers.image.ref.name": "latest" },
    },
    createdAt: new Date(1764770000123),
    updatedAt: new Date(7258118400999),
  },
  {
    name: "bare",
    labels: {},
    target: { mediaType: "", digest: "", size: 0, annotations: {} },
    createdAt: new Date(0),
    updatedAt: new Date(0),
  },
];

describe("Image encoded from its record", () => {
  it("decodes to what the generic encoder makes of it, in Get and List responses", () => {
    const list = fromBinary(ListImagesResponseSchema, imagesResponse(images).framed.subarray(FRAME_HEADER));
    assert.equal(list.images.length, images.length);
    for (const [i, img] of images.entries()) {
      const want = create(ImageSchema, imageToProto(img));
      const get = fromBinary(GetImageResponseSchema, imagesResponse([img]).framed.subarray(FRAME_HEADER));
      for (const got of [list.images[i]!, get.image!])
        if (!equals(ImageSchema, got, want)) {
          assert.deepEqual(got, want);
          assert.fail(`${img.name}: protobuf's equals() sees a difference deepEqual does not`);
        }
    }
  });

  it("kept as field-1 items (the image store's wire column), makes the same answers", () => {
    const kept = images.map(imageItem);
    const list = keptAnswer(kept);
    assert.ok(list.body.equals(imagesResponse(images).body), "List from kept items");
    for (const [i, img] of images.entries())
      assert.ok(keptAnswer([kept[i]!]).body.equals(imagesResponse([img]).body), `Get of ${img.name}`);
  });
});

const infos: SnapshotInfo[] = [
  {
    name: "default/12/sha256:abc",
    parent: "sha256:" + "p".repeat(64),
    kind: "committed",
    labels: { "containerd.io/snapshot.ref": "sha256:x", ünï: "✓" },
    created: new Date(1764770000123),
    updated: new Date(7258118400999),
  },
  { name: "bare", parent: "", kind: "active", labels: {}, created: new Date(0), updated: new Date(0) },
  { name: "v", parent: "bare", kind: "view", labels: { "": "" }, created: new Date(1), updated: new Date(2) },
];

describe("snapshot Info encoded from its record", () => {
  it("decodes to what the generic encoder makes of it, in List and Stat responses", () => {
    const kind = { view: Kind.VIEW, active: Kind.ACTIVE, committed: Kind.COMMITTED } as const;
    const kindOf = (i: SnapshotInfo) => kind[i.kind];
    const list = fromBinary(
      ListSnapshotsResponseSchema,
      infosResponse(infos, kindOf).framed.subarray(FRAME_HEADER),
    );
    assert.equal(list.info.length, infos.length);
    for (const [n, info] of infos.entries()) {
      const want = create(InfoSchema, infoToProto(info));
      const stat = fromBinary(
        StatSnapshotResponseSchema,
        infosResponse([info], kindOf).framed.subarray(FRAME_HEADER),
      );
      for (const got of [list.info[n]!, stat.info!])
        if (!equals(InfoSchema, got, want)) {
          assert.deepEqual(got, want);
          assert.fail(`${info.name}: protobuf's equals() sees a difference deepEqual does not`);
        }
    }
  });
});

const blobs: ContentInfo[] = [
  {
    digest: `sha256:${"ab".repeat(32)}`,
    size: 5 * 2 ** 32 + 7, // past 2^32
    createdAt: new Date(1764770000123),
    updatedAt: new Date(7258118400999),
    labels: {
      "containerd.io/gc.ref.content.l.0": `sha256:${"cd".repeat(32)}`,
      "containerd.io/distribution.source.registry.example": "library/ünïcode",
      ["k".repeat(300)]: "v".repeat(200),
    },
  },
  { digest: "", size: 0, createdAt: new Date(0), updatedAt: new Date(1000), labels: {} },
  { digest: "sha256:x", size: 127, createdAt: new Date(999), updatedAt: new Date(999), labels: { "": "" } },
];

describe("content Info encoded from its record", () => {
  for (const b of blobs) {
    it(`decodes to what the generic encoder makes of it (${b.digest.slice(0, 12) || "empty"})`, () => {
      const want = create(ContentInfoSchema, contentInfoToProto(b));
      const one = contentInfosResponse([b]).framed.subarray(FRAME_HEADER);
      const got = fromBinary(InfoResponseSchema, one).info!;
      if (!equals(ContentInfoSchema, got, want)) {
        assert.deepEqual(got, want);
        assert.fail(`${b.digest}: protobuf's equals() sees a difference deepEqual does not`);
      }
    });
  }

  it("makes Info and List responses of field 1", () => {
    const list = fromBinary(
      ListContentResponseSchema,
      contentInfosResponse(blobs).framed.subarray(FRAME_HEADER),
    );
    assert.equal(list.info.length, blobs.length);
    for (const [i, b] of blobs.entries())
      assert.ok(equals(ContentInfoSchema, list.info[i]!, create(ContentInfoSchema, contentInfoToProto(b))));
    assert.equal(list.info[0]!.size, 5n * 2n ** 32n + 7n);
  });
});
