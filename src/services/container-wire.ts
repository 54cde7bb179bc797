// containerd.services.containers.v1.Container encoded straight from a container record, for the
// answers that carry whole records (Get, List, ListStream). Why by hand: a record's OCI spec
// (~4 KiB as `ctr` writes it) went through containerToProto, protobuf-es's create() and its
// generic writer, and was copied four times on the way; a 1,000-container List took 27-38 ms of
// the event loop until its bytes were ready (docs/performance.md, finding 19). Field numbers
// from containerd 1.6's containers.proto (as generated under src/gen): id 1, labels 2, image 3,
// runtime 4 (name 1, options 2), spec 5, snapshotter 6, snapshot_key 7, created_at 8,
// updated_at 9, extensions 10; google.protobuf.Any is type_url 1, value 2.
import type { DescMessage } from "@bufbuild/protobuf";
import type { AnyValue, Container } from "../core/containers/store.js";
import type { EncodedMessage } from "../grpc/handlers.js";
import {
  FieldOneParts,
  fieldOneItem,
  fieldOneResponse,
  fieldSize,
  stringFieldSize,
  stringMapPlan,
  stringMapSize,
  timesPlan,
  utf8,
  type Writer,
  writeStringMap,
  writeTimes,
} from "../grpc/proto-writer.js";

function anySize(a: AnyValue): number {
  return stringFieldSize(utf8(a.typeUrl)) + (a.value.length === 0 ? 0 : fieldSize(a.value.length));
}

function writeAny(w: Writer, field: number, a: AnyValue, size: number): void {
  w.open(field, size);
  w.string(1, a.typeUrl, utf8(a.typeUrl));
  w.bytes(2, a.value);
}

/** What encoding a container takes: its fields' lengths, computed once, and its size. */
function plan(c: Container) {
  const runtimeNameLen = utf8(c.runtime.name);
  const options = c.runtime.options;
  const optionsSize = options ? anySize(options) : 0;
  const labels = stringMapPlan(c.labels);
  const extensions = Object.entries(c.extensions).map(([k, a]) => {
    const kl = utf8(k);
    const as = anySize(a);
    return { k, a, kl, as, size: fieldSize(kl) + fieldSize(as) };
  });
  const p = {
    c,
    idLen: utf8(c.id),
    imageLen: utf8(c.image),
    snapshotterLen: utf8(c.snapshotter),
    keyLen: utf8(c.snapshotKey),
    runtimeNameLen,
    optionsSize,
    runtimeSize: stringFieldSize(runtimeNameLen) + (options ? fieldSize(optionsSize) : 0),
    specSize: c.spec ? anySize(c.spec) : 0,
    times: timesPlan(c.createdAt, c.updatedAt),
    labels,
    extensions,
    size: 0,
  };
  p.size =
    stringFieldSize(p.idLen) +
    stringMapSize(labels) +
    stringFieldSize(p.imageLen) +
    fieldSize(p.runtimeSize) +
    (c.spec ? fieldSize(p.specSize) : 0) +
    stringFieldSize(p.snapshotterLen) +
    stringFieldSize(p.keyLen) +
    p.times.size;
  for (const e of extensions) p.size += fieldSize(e.size);
  return p;
}

function write(w: Writer, p: ReturnType<typeof plan>): void {
  const c = p.c;
  w.string(1, c.id, p.idLen);
  writeStringMap(w, 2, p.labels);
  w.string(3, c.image, p.imageLen);
  w.open(4, p.runtimeSize);
  w.string(1, c.runtime.name, p.runtimeNameLen);
  if (c.runtime.options) writeAny(w, 2, c.runtime.options, p.optionsSize);
  if (c.spec) writeAny(w, 5, c.spec, p.specSize);
  w.string(6, c.snapshotter, p.snapshotterLen);
  w.string(7, c.snapshotKey, p.keyLen);
  writeTimes(w, 8, p.times);
  for (const e of p.extensions) {
    w.open(10, e.size);
    w.stringAlways(1, e.k, e.kl);
    writeAny(w, 2, e.a, e.as);
  }
}

/**
 * A response whose field 1 is the containers (ListContainersResponse; with one container also
 * GetContainerResponse and ListContainerMessage), framed for the gRPC wire, in one buffer.
 */
export function containersResponse<O extends DescMessage>(cs: readonly Container[]): EncodedMessage<O> {
  return fieldOneResponse<ReturnType<typeof plan>, O>(cs.map(plan), write);
}

/**
 * ListContainersResponse from containers handed over one at a time (ContainerStore.each), each
 * encoded as it comes, in parts (FieldOneParts): a row is garbage as soon as it is written.
 */
export function containersResponseEach<O extends DescMessage>(
  each: (fn: (c: Container) => void) => void,
  partBytes?: number,
): EncodedMessage<O> {
  const parts = new FieldOneParts<ReturnType<typeof plan>>(write, partBytes);
  each((c) => parts.add(plan(c)));
  return parts.finish<O>();
}

/**
 * A container record as field 1 of an answer (GetContainerResponse, ListContainersResponse,
 * ListContainerMessage): what the store keeps with each row (ContainerStore's `encode`), so that
 * answers are the kept items as they are.
 */
export function containerItem(c: Container): Buffer {
  return fieldOneItem(plan(c), write);
}
