// HTTP/2 request headers whose `:authority` Node's HTTP/2 (nghttp2) refuses. grpc-go clients of
// the Kubernetes 1.2x era (crictl 1.26, kubelets of that time) send a unix socket's path as
// `:authority`; nghttp2 answers such a request with RST_STREAM(PROTOCOL_ERROR) before any handler
// sees it, while grpc-go servers (containerd) accept it. berthd looks at the first request of
// each connection: a valid authority hands the socket to node:http2 untouched; an invalid one
// puts the connection through `AuthorityRewriter`, which replaces that value in every header
// block with as many `x`s as it had characters. Same length means same HPACK table entry size,
// so the client's and nghttp2's dynamic tables stay identical. Facts from RFC 7540 (framing) and
// RFC 7541 (HPACK: integers, strings, the static table's index 1 for :authority, Appendix B's
// Huffman code).

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const FRAME_HEADERS = 0x1;
const FRAME_SETTINGS = 0x4;
const FLAG_ACK = 0x1;
const FRAME_CONTINUATION = 0x9;
const FLAG_END_STREAM = 0x1;
const FLAG_END_HEADERS = 0x4;
const FLAG_PADDED = 0x8;
const FLAG_PRIORITY = 0x20;
/** RFC 7541 static table index of `:authority`. */
const STATIC_AUTHORITY = 1;

/** RFC 7541 Appendix B: [code, bit length] of symbols 0..255 and EOS (256). */
const HUFFMAN: readonly (readonly [number, number])[] = [
  [0x1ff8, 13],
  [0x7fffd8, 23],
  [0xfffffe2, 28],
  [0xfffffe3, 28],
  [0xfffffe4, 28],
  [0xfffffe5, 28],
  [0xfffffe6, 28],
  [0xfffffe7, 28],
  [0xfffffe8, 28],
  [0xffffea, 24],
  [0x3ffffffc, 30],
  [0xfffffe9, 28],
  [0xfffffea, 28],
  [0x3ffffffd, 30],
  [0xfffffeb, 28],
  [0xfffffec, 28],
  [0xfffffed, 28],
  [0xfffffee, 28],
  [0xfffffef, 28],
  [0xffffff0, 28],
  [0xffffff1, 28],
  [0xffffff2, 28],
  [0x3ffffffe, 30],
  [0xffffff3, 28],
  [0xffffff4, 28],
  [0xffffff5, 28],
  [0xffffff6, 28],
  [0xffffff7, 28],
  [0xffffff8, 28],
  [0xffffff9, 28],
  [0xffffffa, 28],
  [0xffffffb, 28],
  [0x14, 6],
  [0x3f8, 10],
  [0x3f9, 10],
  [0xffa, 12],
  [0x1ff9, 13],
  [0x15, 6],
  [0xf8, 8],
  [0x7fa, 11],
  [0x3fa, 10],
  [0x3fb, 10],
  [0xf9, 8],
  [0x7fb, 11],
  [0xfa, 8],
  [0x16, 6],
  [0x17, 6],
  [0x18, 6],
  [0x0, 5],
  [0x1, 5],
  [0x2, 5],
  [0x19, 6],
  [0x1a, 6],
  [0x1b, 6],
  [0x1c, 6],
  [0x1d, 6],
  [0x1e, 6],
  [0x1f, 6],
  [0x5c, 7],
  [0xfb, 8],
  [0x7ffc, 15],
  [0x20, 6],
  [0xffb, 12],
  [0x3fc, 10],
  [0x1ffa, 13],
  [0x21, 6],
  [0x5d, 7],
  [0x5e, 7],
  [0x5f, 7],
  [0x60, 7],
  [0x61, 7],
  [0x62, 7],
  [0x63, 7],
  [0x64, 7],
  [0x65, 7],
  [0x66, 7],
  [0x67, 7],
  [0x68, 7],
  [0x69, 7],
  [0x6a, 7],
  [0x6b, 7],
  [0x6c, 7],
  [0x6d, 7],
  [0x6e, 7],
  [0x6f, 7],
  [0x70, 7],
  [0x71, 7],
  [0x72, 7],
  [0xfc, 8],
  [0x73, 7],
  [0xfd, 8],
  [0x1ffb, 13],
  [0x7fff0, 19],
  [0x1ffc, 13],
  [0x3ffc, 14],
  [0x22, 6],
  [0x7ffd, 15],
  [0x3, 5],
  [0x23, 6],
  [0x4, 5],
  [0x24, 6],
  [0x5, 5],
  [0x25, 6],
  [0x26, 6],
  [0x27, 6],
  [0x6, 5],
  [0x74, 7],
  [0x75, 7],
  [0x28, 6],
  [0x29, 6],
  [0x2a, 6],
  [0x7, 5],
  [0x2b, 6],
  [0x76, 7],
  [0x2c, 6],
  [0x8, 5],
  [0x9, 5],
  [0x2d, 6],
  [0x77, 7],
  [0x78, 7],
  [0x79, 7],
  [0x7a, 7],
  [0x7b, 7],
  [0x7ffe, 15],
  [0x7fc, 11],
  [0x3ffd, 14],
  [0x1ffd, 13],
  [0xffffffc, 28],
  [0xfffe6, 20],
  [0x3fffd2, 22],
  [0xfffe7, 20],
  [0xfffe8, 20],
  [0x3fffd3, 22],
  [0x3fffd4, 22],
  [0x3fffd5, 22],
  [0x7fffd9, 23],
  [0x3fffd6, 22],
  [0x7fffda, 23],
  [0x7fffdb, 23],
  [0x7fffdc, 23],
  [0x7fffdd, 23],
  [0x7fffde, 23],
  [0xffffeb, 24],
  [0x7fffdf, 23],
  [0xffffec, 24],
  [0xffffed, 24],
  [0x3fffd7, 22],
  [0x7fffe0, 23],
  [0xffffee, 24],
  [0x7fffe1, 23],
  [0x7fffe2, 23],
  [0x7fffe3, 23],
  [0x7fffe4, 23],
  [0x1fffdc, 21],
  [0x3fffd8, 22],
  [0x7fffe5, 23],
  [0x3fffd9, 22],
  [0x7fffe6, 23],
  [0x7fffe7, 23],
  [0xffffef, 24],
  [0x3fffda, 22],
  [0x1fffdd, 21],
  [0xfffe9, 20],
  [0x3fffdb, 22],
  [0x3fffdc, 22],
  [0x7fffe8, 23],
  [0x7fffe9, 23],
  [0x1fffde, 21],
  [0x7fffea, 23],
  [0x3fffdd, 22],
  [0x3fffde, 22],
  [0xfffff0, 24],
  [0x1fffdf, 21],
  [0x3fffdf, 22],
  [0x7fffeb, 23],
  [0x7fffec, 23],
  [0x1fffe0, 21],
  [0x1fffe1, 21],
  [0x3fffe0, 22],
  [0x1fffe2, 21],
  [0x7fffed, 23],
  [0x3fffe1, 22],
  [0x7fffee, 23],
  [0x7fffef, 23],
  [0xfffea, 20],
  [0x3fffe2, 22],
  [0x3fffe3, 22],
  [0x3fffe4, 22],
  [0x7ffff0, 23],
  [0x3fffe5, 22],
  [0x3fffe6, 22],
  [0x7ffff1, 23],
  [0x3ffffe0, 26],
  [0x3ffffe1, 26],
  [0xfffeb, 20],
  [0x7fff1, 19],
  [0x3fffe7, 22],
  [0x7ffff2, 23],
  [0x3fffe8, 22],
  [0x1ffffec, 25],
  [0x3ffffe2, 26],
  [0x3ffffe3, 26],
  [0x3ffffe4, 26],
  [0x7ffffde, 27],
  [0x7ffffdf, 27],
  [0x3ffffe5, 26],
  [0xfffff1, 24],
  [0x1ffffed, 25],
  [0x7fff2, 19],
  [0x1fffe3, 21],
  [0x3ffffe6, 26],
  [0x7ffffe0, 27],
  [0x7ffffe1, 27],
  [0x3ffffe7, 26],
  [0x7ffffe2, 27],
  [0xfffff2, 24],
  [0x1fffe4, 21],
  [0x1fffe5, 21],
  [0x3ffffe8, 26],
  [0x3ffffe9, 26],
  [0xffffffd, 28],
  [0x7ffffe3, 27],
  [0x7ffffe4, 27],
  [0x7ffffe5, 27],
  [0xfffec, 20],
  [0xfffff3, 24],
  [0xfffed, 20],
  [0x1fffe6, 21],
  [0x3fffe9, 22],
  [0x1fffe7, 21],
  [0x1fffe8, 21],
  [0x7ffff3, 23],
  [0x3fffea, 22],
  [0x3fffeb, 22],
  [0x1ffffee, 25],
  [0x1ffffef, 25],
  [0xfffff4, 24],
  [0xfffff5, 24],
  [0x3ffffea, 26],
  [0x7ffff4, 23],
  [0x3ffffeb, 26],
  [0x7ffffe6, 27],
  [0x3ffffec, 26],
  [0x3ffffed, 26],
  [0x7ffffe7, 27],
  [0x7ffffe8, 27],
  [0x7ffffe9, 27],
  [0x7ffffea, 27],
  [0x7ffffeb, 27],
  [0xffffffe, 28],
  [0x7ffffec, 27],
  [0x7ffffed, 27],
  [0x7ffffee, 27],
  [0x7ffffef, 27],
  [0x7fffff0, 27],
  [0x3ffffee, 26],
  [0x3fffffff, 30],
];

interface Node {
  sym?: number;
  kids: (Node | undefined)[];
}

let trie: Node | undefined;
function huffmanTrie(): Node {
  if (trie) return trie;
  const root: Node = { kids: [] };
  HUFFMAN.forEach(([code, len], sym) => {
    let n = root;
    for (let i = len - 1; i >= 0; i--) {
      const bit = (code >>> i) & 1;
      n = n.kids[bit] ??= { kids: [] };
    }
    n.sym = sym;
  });
  trie = root;
  return root;
}

/** Decodes an HPACK Huffman string (padding: up to 7 one-bits, as RFC 7541 5.2 allows). */
export function huffmanDecode(bytes: Uint8Array): string {
  const root = huffmanTrie();
  let n = root;
  let out = "";
  for (const b of bytes) {
    for (let i = 7; i >= 0; i--) {
      const next = n.kids[(b >> i) & 1];
      if (!next) throw new Error("invalid HPACK Huffman code");
      if (next.sym !== undefined) {
        if (next.sym === 256) throw new Error("HPACK Huffman string contains EOS");
        out += String.fromCharCode(next.sym);
        n = root;
      } else n = next;
    }
  }
  return out;
}

/** The characters nghttp2 accepts in an authority (RFC 3986 reg-name, port, userinfo, IP literal). */
export function isAcceptedAuthority(s: string): boolean {
  return /^[A-Za-z0-9\-._~!$&'()*+,;=:@[\]%]*$/.test(s);
}

/** An HPACK integer with an N-bit prefix at `at`: [value, next offset]. */
function readInt(b: Uint8Array, at: number, prefix: number): [number, number] {
  const max = (1 << prefix) - 1;
  let v = b[at]! & max;
  at++;
  if (v < max) return [v, at];
  let shift = 0;
  for (;;) {
    if (at >= b.length) throw new Error("truncated HPACK integer");
    const x = b[at++]!;
    v += (x & 0x7f) * 2 ** shift;
    shift += 7;
    if ((x & 0x80) === 0) return [v, at];
    if (shift > 28) throw new Error("HPACK integer too large");
  }
}

function writeInt(out: number[], first: number, prefix: number, v: number): void {
  const max = (1 << prefix) - 1;
  if (v < max) {
    out.push(first | v);
    return;
  }
  out.push(first | max);
  v -= max;
  while (v >= 0x80) {
    out.push((v & 0x7f) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
}

/** An HPACK string at `at`: its text and the next offset. */
function readString(b: Uint8Array, at: number): [string, number] {
  if (at >= b.length) throw new Error("truncated HPACK string");
  const huffman = (b[at]! & 0x80) !== 0;
  const [len, start] = readInt(b, at, 7);
  const end = start + len;
  if (end > b.length) throw new Error("truncated HPACK string");
  const raw = b.subarray(start, end);
  return [huffman ? huffmanDecode(raw) : Buffer.from(raw).toString("latin1"), end];
}

/**
 * Walks a header block: calls `onAuthority` with each literal `:authority` value and, when it
 * returns a replacement, writes that representation again with the new value (a raw string,
 * same representation type and name). Returns the block (the same bytes when nothing changed).
 */
export function rewriteAuthority(
  block: Uint8Array,
  onAuthority: (v: string) => string | undefined,
): Uint8Array {
  const out: number[] = [];
  let changed = false;
  let at = 0;
  while (at < block.length) {
    const start = at;
    const b = block[at]!;
    if (b & 0x80) {
      at = readInt(block, at, 7)[1]; // indexed field
      for (let i = start; i < at; i++) out.push(block[i]!);
      continue;
    }
    if ((b & 0xe0) === 0x20) {
      at = readInt(block, at, 5)[1]; // dynamic table size update
      for (let i = start; i < at; i++) out.push(block[i]!);
      continue;
    }
    // literal: with incremental indexing (01), without indexing (0000) or never indexed (0001)
    const prefix = (b & 0xc0) === 0x40 ? 6 : 4;
    const kind = b & (prefix === 6 ? 0xc0 : 0xf0);
    const [nameIndex, afterIndex] = readInt(block, at, prefix);
    at = afterIndex;
    let name: string | undefined;
    if (nameIndex === 0) [name, at] = readString(block, at);
    const [value, end] = readString(block, at);
    at = end;
    const isAuthority = nameIndex === STATIC_AUTHORITY || name === ":authority";
    const replacement = isAuthority ? onAuthority(value) : undefined;
    if (replacement === undefined) {
      for (let i = start; i < at; i++) out.push(block[i]!);
      continue;
    }
    changed = true;
    writeInt(out, kind, prefix, STATIC_AUTHORITY);
    writeInt(out, 0, 7, replacement.length);
    for (let i = 0; i < replacement.length; i++) out.push(replacement.charCodeAt(i));
  }
  return changed ? Uint8Array.from(out) : block;
}

/** Same-length stand-in for an authority nghttp2 refuses; undefined when it accepts it. */
export const authorityStandIn = (v: string): string | undefined =>
  isAcceptedAuthority(v) ? undefined : "x".repeat(v.length);

/** An empty SETTINGS frame: the server's connection preface, sent before nghttp2 takes over. */
export const EMPTY_SETTINGS = Buffer.from([0, 0, 0, FRAME_SETTINGS, 0, 0, 0, 0, 0]);

export type Sniffed =
  | { state: "more" }
  /** Not an HTTP/2 client: hand the bytes over as they are, for nghttp2 to refuse. */
  | { state: "foreign" }
  /** The first request is in and EMPTY_SETTINGS is acknowledged: `bytes` without that ACK. */
  | { state: "done"; bytes: Buffer; authority?: string };

/**
 * Reads a connection's first client bytes, after berthd sent EMPTY_SETTINGS (grpc-go waits for
 * the server's SETTINGS before its first request): done once the first HEADERS block (with its
 * CONTINUATIONs) is in and the client has acknowledged those settings. The ACK is cut out, as
 * nghttp2, which sends SETTINGS of its own when it takes over, never sent the ones it acknowledges.
 */
export function sniffConnection(buf: Buffer): Sniffed {
  const head = Math.min(buf.length, PREFACE.length);
  if (!buf.subarray(0, head).equals(PREFACE.subarray(0, head))) return { state: "foreign" };
  if (buf.length < PREFACE.length) return { state: "more" };
  let at = PREFACE.length;
  const block: Buffer[] = [];
  let ack: [number, number] | undefined;
  let authority: string | undefined;
  let headersDone = false;
  while (at + 9 <= buf.length && !(headersDone && ack)) {
    const len = buf.readUIntBE(at, 3);
    const type = buf[at + 3]!;
    const flags = buf[at + 4]!;
    if (at + 9 + len > buf.length) break;
    const payload = buf.subarray(at + 9, at + 9 + len);
    if (type === FRAME_SETTINGS && flags & FLAG_ACK && !ack) ack = [at, at + 9 + len];
    at += 9 + len;
    if (headersDone) continue;
    if (type === FRAME_HEADERS) block.push(headerFragment(payload, flags));
    else if (type === FRAME_CONTINUATION && block.length > 0) block.push(payload);
    else continue;
    if (flags & FLAG_END_HEADERS) {
      headersDone = true;
      rewriteAuthority(Buffer.concat(block), (v) => {
        authority ??= v;
        return undefined;
      });
    }
  }
  if (!headersDone || !ack) return { state: "more" };
  return { state: "done", bytes: Buffer.concat([buf.subarray(0, ack[0]), buf.subarray(ack[1])]), authority };
}

/** A HEADERS frame's header block fragment, without padding and priority fields. */
function headerFragment(payload: Buffer, flags: number): Buffer {
  let start = 0;
  let end = payload.length;
  if (flags & FLAG_PADDED) {
    end -= payload[0]!;
    start = 1;
  }
  if (flags & FLAG_PRIORITY) start += 5;
  if (start > end) throw new Error("HEADERS frame padding exceeds its payload");
  return payload.subarray(start, end);
}

/**
 * The client-to-server byte stream of a connection whose requests carry a refused `:authority`:
 * frames pass through as they are, header blocks (HEADERS + CONTINUATIONs) come out as one
 * HEADERS frame with the authority replaced (padding dropped, priority kept).
 */
export class AuthorityRewriter {
  private pending: Buffer = Buffer.alloc(0);
  private prefaceSeen = false;
  private block: Buffer[] = [];
  private headerFlags = 0;
  private headerStream = 0;
  private priority: Buffer | undefined;

  push(chunk: Buffer): Buffer {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const out: Buffer[] = [];
    if (!this.prefaceSeen) {
      if (this.pending.length < PREFACE.length) return Buffer.alloc(0);
      out.push(this.pending.subarray(0, PREFACE.length));
      this.pending = this.pending.subarray(PREFACE.length);
      this.prefaceSeen = true;
    }
    let at = 0;
    const p = this.pending;
    while (at + 9 <= p.length) {
      const len = p.readUIntBE(at, 3);
      if (at + 9 + len > p.length) break;
      const type = p[at + 3]!;
      const flags = p[at + 4]!;
      const payload = p.subarray(at + 9, at + 9 + len);
      if (type === FRAME_HEADERS) {
        this.headerFlags = flags;
        this.headerStream = p.readUInt32BE(at + 5) & 0x7fffffff;
        const start = flags & FLAG_PADDED ? 1 : 0;
        this.priority = flags & FLAG_PRIORITY ? Buffer.from(payload.subarray(start, start + 5)) : undefined;
        this.block = [headerFragment(payload, flags)];
        if (flags & FLAG_END_HEADERS) out.push(this.flushBlock());
      } else if (type === FRAME_CONTINUATION && this.block.length > 0) {
        this.block.push(Buffer.from(payload));
        if (flags & FLAG_END_HEADERS) out.push(this.flushBlock());
      } else out.push(p.subarray(at, at + 9 + len));
      at += 9 + len;
    }
    this.pending = at === p.length ? Buffer.alloc(0) : Buffer.from(p.subarray(at));
    return out.length === 1 ? out[0]! : Buffer.concat(out);
  }

  private flushBlock(): Buffer {
    const block = rewriteAuthority(Buffer.concat(this.block), authorityStandIn);
    this.block = [];
    const payload = this.priority ? Buffer.concat([this.priority, block]) : Buffer.from(block);
    const head = Buffer.alloc(9);
    head.writeUIntBE(payload.length, 0, 3);
    head[3] = FRAME_HEADERS;
    head[4] = (this.headerFlags & (FLAG_END_STREAM | FLAG_PRIORITY)) | FLAG_END_HEADERS;
    head.writeUInt32BE(this.headerStream, 5);
    return Buffer.concat([head, payload]);
  }
}
