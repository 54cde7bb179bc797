// containerd.services.containers.v1.Container encoded straight from a container record, for the
// answers that carry whole records (Get, List, ListStream). Why by hand: a record's OCI spec
// (~4 KiB as `ctr` writes it) went through containerToProto, protobuf-es's create() and its
// generic writer, and was copied four times on the way; a 1,000-container List took 18.6 ms of
// the event loop, 7 of it in the encoder (docs/performance.md, finding 19). This writes each
// field once into a buffer of the exact size. Field numbers from containerd 1.6's
// containers.proto (as generated under src/gen): id 1, labels 2, image 3, runtime 4 (name 1,
// options 2), spec 5, snapshotter 6, snapshot_key 7, created_at 8, updated_at 9, extensions 10;
// google.protobuf.Any is type_url 1, value 2; Timestamp is seconds 1, nanos 2. As proto3
// requires, empty strings and bytes and zero numbers are left out; message fields that are set
// are written even when empty; a map entry writes its key and its value.
import type { DescMessage } from "@bufbuild/protobuf";
import type { AnyValue, Container } from "../core/containers/store.js";
import { varintLength } from "../grpc/encoded-field.js";
import { EncodedMessage } from "../grpc/handlers.js";
import { FRAME_HEADER } from "../grpc/wire.js";

const LEN = 2; // wire type: length-delimited
const VARINT = 0;

/** varintLength for any safe integer (int64 seconds), not only 32-bit ones. */
function varintLength64(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    len++;
  }
  return len;
}

class Writer {
  at = 0;
  constructor(readonly buf: Buffer) {}

  varint(n: number): void {
    const b = this.buf;
    while (n >= 0x80) {
      b[this.at++] = (n % 128) | 0x80;
      n = Math.floor(n / 128);
    }
    b[this.at++] = n;
  }

  tag(field: number, wire: number): void {
    this.buf[this.at++] = (field << 3) | wire;
  }

  /** A length-delimited field: tag, length, then `write` fills exactly `len` bytes. */
  open(field: number, len: number): void {
    this.tag(field, LEN);
    this.varint(len);
  }

  string(field: number, s: string, byteLen: number): void {
    if (byteLen === 0) return;
    this.open(field, byteLen);
    this.at += this.buf.write(s, this.at, "utf8");
  }

  bytes(field: number, b: Uint8Array): void {
    if (b.length === 0) return;
    this.open(field, b.length);
    this.buf.set(b, this.at);
    this.at += b.length;
  }
}

/** Size of a length-delimited field (tag of fields below 16: one byte) holding `len` bytes. */
const fieldSize = (len: number) => 1 + varintLength(len) + len;
const stringFieldSize = (byteLen: number) => (byteLen === 0 ? 0 : fieldSize(byteLen));
const utf8 = (s: string) => Buffer.byteLength(s, "utf8");

function anySize(a: AnyValue): number {
  return stringFieldSize(utf8(a.typeUrl)) + (a.value.length === 0 ? 0 : fieldSize(a.value.length));
}

function writeAny(w: Writer, field: number, a: AnyValue, size: number): void {
  w.open(field, size);
  w.string(1, a.typeUrl, utf8(a.typeUrl));
  w.bytes(2, a.value);
}

function timestampParts(d: Date): [seconds: number, nanos: number] {
  const ms = d.getTime();
  const seconds = Math.floor(ms / 1000);
  return [seconds, (ms - seconds * 1000) * 1_000_000];
}

function timestampSize([seconds, nanos]: [number, number]): number {
  return (seconds === 0 ? 0 : 1 + varintLength64(seconds)) + (nanos === 0 ? 0 : 1 + varintLength(nanos));
}

function writeTimestamp(w: Writer, field: number, t: [number, number], size: number): void {
  w.open(field, size);
  if (t[0] !== 0) {
    w.tag(1, VARINT);
    w.varint(t[0]);
  }
  if (t[1] !== 0) {
    w.tag(2, VARINT);
    w.varint(t[1]);
  }
}

/** What encoding a container takes: its fields' lengths, computed once, and its size. */
function plan(c: Container) {
  const runtimeNameLen = utf8(c.runtime.name);
  const options = c.runtime.options;
  const optionsSize = options ? anySize(options) : 0;
  const created = timestampParts(c.createdAt);
  const updated = timestampParts(c.updatedAt);
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
    created,
    updated,
    createdSize: timestampSize(created),
    updatedSize: timestampSize(updated),
    labels: Object.entries(c.labels).map(([k, v]) => {
      const kl = utf8(k);
      const vl = utf8(v);
      return { k, v, kl, vl, size: fieldSize(kl) + fieldSize(vl) };
    }),
    extensions: Object.entries(c.extensions).map(([k, a]) => {
      const kl = utf8(k);
      const as = anySize(a);
      return { k, a, kl, as, size: fieldSize(kl) + fieldSize(as) };
    }),
    size: 0,
  };
  p.size =
    stringFieldSize(p.idLen) +
    stringFieldSize(p.imageLen) +
    fieldSize(p.runtimeSize) +
    (c.spec ? fieldSize(p.specSize) : 0) +
    stringFieldSize(p.snapshotterLen) +
    stringFieldSize(p.keyLen) +
    fieldSize(p.createdSize) +
    fieldSize(p.updatedSize);
  for (const l of p.labels) p.size += fieldSize(l.size);
  for (const e of p.extensions) p.size += fieldSize(e.size);
  return p;
}

function write(w: Writer, p: ReturnType<typeof plan>): void {
  const c = p.c;
  const start = w.at;
  w.string(1, c.id, p.idLen);
  for (const l of p.labels) {
    w.open(2, l.size);
    w.open(1, l.kl);
    w.at += w.buf.write(l.k, w.at, "utf8");
    w.open(2, l.vl);
    w.at += w.buf.write(l.v, w.at, "utf8");
  }
  w.string(3, c.image, p.imageLen);
  w.open(4, p.runtimeSize);
  w.string(1, c.runtime.name, p.runtimeNameLen);
  if (c.runtime.options) writeAny(w, 2, c.runtime.options, p.optionsSize);
  if (c.spec) writeAny(w, 5, c.spec, p.specSize);
  w.string(6, c.snapshotter, p.snapshotterLen);
  w.string(7, c.snapshotKey, p.keyLen);
  writeTimestamp(w, 8, p.created, p.createdSize);
  writeTimestamp(w, 9, p.updated, p.updatedSize);
  for (const e of p.extensions) {
    w.open(10, e.size);
    w.open(1, e.kl);
    w.at += w.buf.write(e.k, w.at, "utf8");
    writeAny(w, 2, e.a, e.as);
  }
  if (w.at - start !== p.size)
    throw new Error(`container ${c.id}: encoded ${w.at - start} bytes, sized ${p.size}`);
}

/** The Container message's bytes. */
export function encodeContainer(c: Container): Buffer {
  const p = plan(c);
  const w = new Writer(Buffer.allocUnsafe(p.size));
  write(w, p);
  return w.buf;
}

/**
 * A response whose field 1 is the containers (ListContainersResponse; with one container also
 * GetContainerResponse and ListContainerMessage), framed for the gRPC wire, in one buffer.
 */
export function containersResponse<O extends DescMessage>(cs: readonly Container[]): EncodedMessage<O> {
  const plans = cs.map(plan);
  let size = FRAME_HEADER;
  for (const p of plans) size += fieldSize(p.size);
  const w = new Writer(Buffer.allocUnsafe(size));
  w.at = FRAME_HEADER;
  for (const p of plans) {
    w.open(1, p.size);
    write(w, p);
  }
  return new EncodedMessage<O>(w.buf);
}
