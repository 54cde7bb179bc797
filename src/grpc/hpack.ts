// HPACK (RFC 7541) for berthd's HTTP/2 server: decoding request header blocks (static and
// dynamic tables, integers, raw and Huffman-coded strings, table size updates) and encoding the
// few response header blocks a gRPC server sends. The encoder never indexes: every field it
// writes is an indexed static entry or a literal without indexing, so the client's dynamic table
// only ever holds what the client put there. Facts from RFC 7541: section 5 (integers and
// strings), section 6 (field representations), Appendix A (static table), Appendix B (Huffman).

/** RFC 7541 Appendix B: [code, bit length] of symbols 0..255 and EOS (256). */
export const HUFFMAN: readonly (readonly [number, number])[] = [
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

/**
 * The Huffman code as a state machine read 4 bits at a time. A state is a node of the code's
 * tree (index into `kid0`/`kid1`/`sym`); an entry of `table` (16 per state) holds the next state
 * in bits 0-9, the symbol completed on the way in bits 10-17 with bit 18 set when there is one,
 * and bit 19 when the bits lead nowhere (EOS or outside the code). A nibble completes at most one
 * symbol: no code is shorter than 5 bits. Entries are computed on first use (0 means not yet: a
 * real entry either emits or moves below the root), so a daemon's first request does not pay
 * for the ~500 states real headers never reach.
 */
const EMITS = 1 << 18;
const FAILS = 1 << 19;
const NODES = 2 * HUFFMAN.length - 1;
let tree: { kid0: Int16Array; kid1: Int16Array; sym: Int16Array } | undefined;
let table: Int32Array | undefined;

function huffmanTree() {
  if (tree) return tree;
  const kid0 = new Int16Array(NODES).fill(-1);
  const kid1 = new Int16Array(NODES).fill(-1);
  const sym = new Int16Array(NODES).fill(-1);
  let count = 1; // node 0 is the root
  for (let s = 0; s < HUFFMAN.length; s++) {
    const [code, len] = HUFFMAN[s]!;
    let n = 0;
    for (let i = len - 1; i >= 0; i--) {
      const kids = (code >>> i) & 1 ? kid1 : kid0;
      if (kids[n]! < 0) kids[n] = count++;
      n = kids[n]!;
    }
    sym[n] = s;
  }
  tree = { kid0, kid1, sym };
  return tree;
}

function huffmanEntry(t: Int32Array, state: number, nibble: number): number {
  const { kid0, kid1, sym } = huffmanTree();
  let n = state;
  let entry = 0;
  for (let i = 3; i >= 0; i--) {
    const next = (nibble >> i) & 1 ? kid1[n]! : kid0[n]!;
    if (next < 0 || sym[next] === 256) {
      entry = FAILS;
      break;
    }
    if (sym[next]! >= 0) {
      entry |= EMITS | (sym[next]! << 10);
      n = 0;
    } else n = next;
  }
  if (!(entry & FAILS)) entry |= n;
  t[(state << 4) | nibble] = entry;
  return entry;
}

/** Decodes an HPACK Huffman string (padding: up to 7 one-bits, as RFC 7541 5.2 allows). */
export function huffmanDecode(bytes: Uint8Array): string {
  table ??= new Int32Array(NODES * 16);
  const t = table;
  const chars: number[] = [];
  let state = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    let e = t[(state << 4) | (b >> 4)]! || huffmanEntry(t, state, b >> 4);
    if (e & FAILS) throw new Error("invalid HPACK Huffman code");
    if (e & EMITS) chars.push((e >> 10) & 0xff);
    state = e & 0x3ff;
    e = t[(state << 4) | (b & 0xf)]! || huffmanEntry(t, state, b & 0xf);
    if (e & FAILS) throw new Error("invalid HPACK Huffman code");
    if (e & EMITS) chars.push((e >> 10) & 0xff);
    state = e & 0x3ff;
  }
  // apply() takes the codes as arguments: fine for header-sized strings, not for a huge one
  return chars.length <= 4096
    ? String.fromCharCode.apply(null, chars)
    : Buffer.from(chars).toString("latin1");
}

/** RFC 7541 Appendix A: the static table, entries 1 to 61 (index 0 unused). */
const STATIC_TABLE: readonly (readonly [string, string])[] = [
  ["", ""],
  [":authority", ""],
  [":method", "GET"],
  [":method", "POST"],
  [":path", "/"],
  [":path", "/index.html"],
  [":scheme", "http"],
  [":scheme", "https"],
  [":status", "200"],
  [":status", "204"],
  [":status", "206"],
  [":status", "304"],
  [":status", "400"],
  [":status", "404"],
  [":status", "500"],
  ["accept-charset", ""],
  ["accept-encoding", "gzip, deflate"],
  ["accept-language", ""],
  ["accept-ranges", ""],
  ["accept", ""],
  ["access-control-allow-origin", ""],
  ["age", ""],
  ["allow", ""],
  ["authorization", ""],
  ["cache-control", ""],
  ["content-disposition", ""],
  ["content-encoding", ""],
  ["content-language", ""],
  ["content-length", ""],
  ["content-location", ""],
  ["content-range", ""],
  ["content-type", ""],
  ["cookie", ""],
  ["date", ""],
  ["etag", ""],
  ["expect", ""],
  ["expires", ""],
  ["from", ""],
  ["host", ""],
  ["if-match", ""],
  ["if-modified-since", ""],
  ["if-none-match", ""],
  ["if-range", ""],
  ["if-unmodified-since", ""],
  ["last-modified", ""],
  ["link", ""],
  ["location", ""],
  ["max-forwards", ""],
  ["proxy-authenticate", ""],
  ["proxy-authorization", ""],
  ["range", ""],
  ["referer", ""],
  ["refresh", ""],
  ["retry-after", ""],
  ["server", ""],
  ["set-cookie", ""],
  ["strict-transport-security", ""],
  ["transfer-encoding", ""],
  ["user-agent", ""],
  ["vary", ""],
  ["via", ""],
  ["www-authenticate", ""],
];
const STATIC_COUNT = STATIC_TABLE.length - 1;

/** Decoded request headers: lowercase names; a repeated field's values as an array. */
export type HeaderRecord = Record<string, string | string[]>;

export class HpackError extends Error {}

/** RFC 7541 4.1: an entry's size is its name and value lengths plus 32. */
const entrySize = (name: string, value: string) => name.length + value.length + 32;

/**
 * The decoding side of one HTTP/2 connection. Header blocks must be decoded in the order they
 * arrive, every one of them (also for streams that are refused), or the dynamic table drifts
 * from the client's.
 */
export class HpackDecoder {
  /** Newest first: dynamic index 62 is dyn[0]. */
  private readonly dyn: [string, string][] = [];
  private size = 0;
  private maxSize: number;
  private at = 0;
  private block: Uint8Array = new Uint8Array(0);

  /** `limit`: SETTINGS_HEADER_TABLE_SIZE this side announced (the default is 4096). */
  constructor(private readonly limit = 4096) {
    this.maxSize = limit;
  }

  /** Decodes a complete header block into a fresh record. Throws HpackError on malformed input. */
  decode(block: Uint8Array): HeaderRecord {
    // a plain object keeps V8's fast properties (a null-prototype one starts as a dictionary);
    // add() keeps `__proto__` out of it
    const out: HeaderRecord = {};
    this.block = block;
    this.at = 0;
    while (this.at < block.length) {
      const b = block[this.at]!;
      if (b & 0x80) {
        const [name, value] = this.entry(this.int(7));
        add(out, name, value);
      } else if (b & 0x40) {
        const index = this.int(6);
        const name = index === 0 ? this.string() : this.entry(index)[0];
        const value = this.string();
        this.insert(name, value);
        add(out, name, value);
      } else if (b & 0x20) {
        const size = this.int(5);
        if (size > this.limit) throw new HpackError(`HPACK table size update ${size} over ${this.limit}`);
        this.maxSize = size;
        this.evict(0);
      } else {
        // literal without indexing (0000) or never indexed (0001)
        const index = this.int(4);
        const name = index === 0 ? this.string() : this.entry(index)[0];
        add(out, name, this.string());
      }
    }
    this.block = EMPTY;
    return out;
  }

  private entry(index: number): readonly [string, string] {
    if (index === 0) throw new HpackError("HPACK index 0");
    if (index <= STATIC_COUNT) return STATIC_TABLE[index]!;
    const e = this.dyn[index - STATIC_COUNT - 1];
    if (!e) throw new HpackError(`HPACK index ${index} is not in the table`);
    return e;
  }

  private insert(name: string, value: string): void {
    const size = entrySize(name, value);
    this.evict(size);
    // an entry larger than the whole table empties it and is not added (RFC 7541 4.4)
    if (size > this.maxSize) return;
    this.dyn.unshift([name, value]);
    this.size += size;
  }

  /** Drops the oldest entries until `room` more bytes fit. */
  private evict(room: number): void {
    while (this.dyn.length > 0 && this.size + room > this.maxSize) {
      const [n, v] = this.dyn.pop()!;
      this.size -= entrySize(n, v);
    }
  }

  /** An integer with an N-bit prefix (RFC 7541 5.1). */
  private int(prefix: number): number {
    const b = this.block;
    const max = (1 << prefix) - 1;
    let v = b[this.at++]! & max;
    if (v < max) return v;
    let shift = 0;
    for (;;) {
      if (this.at >= b.length) throw new HpackError("truncated HPACK integer");
      const x = b[this.at++]!;
      v += (x & 0x7f) * 2 ** shift;
      shift += 7;
      if ((x & 0x80) === 0) return v;
      if (shift > 28) throw new HpackError("HPACK integer too large");
    }
  }

  /** A string literal, raw or Huffman-coded (RFC 7541 5.2). */
  private string(): string {
    const b = this.block;
    if (this.at >= b.length) throw new HpackError("truncated HPACK string");
    const huffman = (b[this.at]! & 0x80) !== 0;
    const len = this.int(7);
    const end = this.at + len;
    if (end > b.length) throw new HpackError("truncated HPACK string");
    const raw = b.subarray(this.at, end);
    this.at = end;
    if (!huffman) return Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString("latin1");
    try {
      return huffmanDecode(raw);
    } catch (err) {
      throw new HpackError((err as Error).message);
    }
  }
}

const EMPTY = new Uint8Array(0);

function add(out: HeaderRecord, name: string, value: string): void {
  if (name === "__proto__") return;
  const had = Object.hasOwn(out, name) ? out[name] : undefined;
  if (had === undefined) out[name] = value;
  else if (typeof had === "string") out[name] = [had, value];
  else had.push(value);
}

function pushInt(out: number[], first: number, prefix: number, v: number): void {
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

function pushString(out: number[], s: string): void {
  const bytes = Buffer.from(s, "latin1");
  pushInt(out, 0, 7, bytes.length);
  for (const x of bytes) out.push(x);
}

/**
 * A header block of the given fields: a field that is a whole static entry as its index, a name
 * in the static table by index with a literal value, the rest as literals; none indexed.
 */
export function encodeHeaderBlock(fields: readonly (readonly [string, string])[]): Buffer {
  const out: number[] = [];
  for (const [name, value] of fields) {
    let whole = 0;
    let byName = 0;
    for (let i = 1; i <= STATIC_COUNT; i++) {
      const e = STATIC_TABLE[i]!;
      if (e[0] !== name) continue;
      if (e[1] === value) {
        whole = i;
        break;
      }
      if (byName === 0) byName = i;
    }
    if (whole > 0) {
      pushInt(out, 0x80, 7, whole);
      continue;
    }
    pushInt(out, 0x00, 4, byName); // literal without indexing; 0: the name follows
    if (byName === 0) pushString(out, name);
    pushString(out, value);
  }
  return Buffer.from(out);
}
