import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { goDuration } from "../../src/base/duration.js";
import { BerthError } from "../../src/base/errdefs.js";
import { digestError, LocalContentStore, type LocalWriter } from "../../src/core/content/local.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const sha256 = (b: Uint8Array) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const sha512 = (b: Uint8Array) => `sha512:${createHash("sha512").update(b).digest("hex")}`;

function rejectsKind(kind: string, message?: RegExp | string) {
  return (err: unknown) => {
    assert.ok(err instanceof BerthError, `expected BerthError, got ${String(err)}`);
    assert.equal(err.kind, kind);
    if (typeof message === "string") assert.equal(err.message, message);
    else if (message) assert.match(err.message, message);
    return true;
  };
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(c);
  return Buffer.concat(parts);
}

let dir: string;
let n = 0;
/** A fresh store root per test. */
async function newStore(): Promise<LocalContentStore> {
  return new LocalContentStore(join(dir, `store-${n++}`)).init();
}

before(async () => {
  dir = await makeTempDir("content-local");
});
after(async () => {
  await removeTempDir(dir);
});

describe("local content store", () => {
  it("commits a blob into containerd's layout, read-only, and removes the ingest", async () => {
    const s = await newStore();
    const data = randomBytes(3 << 20);
    const w = await s.writer("ref-a", data.length);
    const ingest = w.path;
    assert.equal(readFileSync(join(ingest, "ref"), "utf8"), "ref-a");
    assert.equal(readFileSync(join(ingest, "total"), "utf8"), String(data.length));
    assert.equal(ingest, join(s.root, "ingest", createHash("sha256").update("ref-a").digest("hex")));
    await w.write(data.subarray(0, 1000));
    await w.write(data.subarray(1000));
    assert.equal(w.status().offset, data.length);
    assert.equal(w.digest(), sha256(data));
    const d = await w.commit(data.length, sha256(data));
    assert.equal(d, sha256(data));
    const blob = join(s.root, "blobs", "sha256", d.slice(7));
    assert.deepEqual(readFileSync(blob), data);
    assert.equal(statSync(blob).mode & 0o222, 0, "blob is read-only");
    assert.equal(existsSync(ingest), false);
    const info = await s.info(d);
    assert.equal(info.size, data.length);
    // the ref is free again
    const w2 = await s.writer("ref-a");
    await w2.close();
  });

  it("verifies size and digest on commit with containerd's messages", async () => {
    const s = await newStore();
    const data = Buffer.from("hello world");
    const w = await s.writer("sz");
    await w.write(data);
    await assert.rejects(
      w.commit(5, ""),
      rejectsKind("failed precondition", "unexpected commit size 11, expected 5: failed precondition"),
    );
    // the writer is spent, but the ingest data stays for a retry
    const w2 = await s.writer("sz");
    assert.equal(w2.status().offset, 11);
    const wrong = sha256(Buffer.from("other"));
    await assert.rejects(
      w2.commit(11, wrong),
      rejectsKind(
        "failed precondition",
        `unexpected commit digest ${sha256(data)}, expected ${wrong}: failed precondition`,
      ),
    );
    const w3 = await s.writer("sz");
    assert.equal(await w3.commit(0, ""), sha256(data));
    await assert.rejects(
      w3.commit(0, ""),
      rejectsKind("failed precondition", /cannot commit on closed writer/),
    );
  });

  it("rehashes for an expected digest of another algorithm", async () => {
    const s = await newStore();
    const data = randomBytes(100_000);
    const w = await s.writer("alg");
    await w.write(data);
    assert.equal(await w.commit(data.length, sha512(data)), sha512(data));
    assert.equal((await s.info(sha512(data))).size, data.length);
    // a writer told the algorithm up front hashes with it directly
    const w2 = await s.writer("alg2", 0, sha512(Buffer.from("x")));
    await w2.write(Buffer.from("x"));
    assert.equal(w2.digest(), sha512(Buffer.from("x")));
    await w2.close();
  });

  it("answers AlreadyExists for a blob that is already stored", async () => {
    const s = await newStore();
    const data = Buffer.from("dup");
    const w = await s.writer("d1");
    await w.write(data);
    await w.commit(0, "");
    await assert.rejects(
      s.writer("d2", 0, sha256(data)),
      rejectsKind("already exists", `content ${sha256(data)}: already exists`),
    );
    // the ref is not left locked by the failed open
    const w2 = await s.writer("d2");
    await w2.write(data);
    await assert.rejects(
      w2.commit(0, ""),
      rejectsKind("already exists", `content ${sha256(data)}: already exists`),
    );
    assert.equal(existsSync(w2.path), false, "ingest removed on collision");
  });

  it("locks a ref to one writer, with containerd's message", async () => {
    const s = await newStore();
    const w = await s.writer("locked");
    await assert.rejects(
      s.writer("locked"),
      rejectsKind(
        "unavailable",
        /^ref locked locked for \d+(\.\d+)?(ns|µs|ms|s) \(since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? [+-]\d{4} \S+ m=\+\d+\.\d{9}\): unavailable$/,
      ),
    );
    await w.close();
    const w2 = await s.writer("locked");
    await w2.close();
  });

  it("resumes an ingest after a crash, rebuilding the digest from the data", async () => {
    const root = join(dir, "crash");
    const data = randomBytes(5 << 20);
    const half = 2 * 1024 * 1024 + 17;
    const s1 = await new LocalContentStore(root).init();
    const w1 = await s1.writer("resume", data.length);
    await w1.write(data.subarray(0, half));
    // crash: the writer is never committed or closed; a new process opens the store
    const s2 = await new LocalContentStore(root).init();
    const st = await s2.status("resume");
    assert.equal(st.offset, half);
    assert.equal(st.total, data.length);
    assert.equal(st.ref, "resume");
    const w2 = await s2.writer("resume");
    assert.equal(w2.status().offset, half);
    assert.equal(w2.status().total, data.length);
    assert.equal(w2.digest(), sha256(data.subarray(0, half)));
    await w2.write(data.subarray(half));
    assert.equal(await w2.commit(data.length, sha256(data)), sha256(data));
    assert.deepEqual(readFileSync(s2.blobPath(sha256(data))), data);
    await (w1 as unknown as { fh?: { close(): Promise<void> } }).fh?.close();
  });

  it("starts over when an ingest cannot be resumed", async () => {
    const s = await newStore();
    const w = await s.writer("broken");
    await w.write(Buffer.from("garbage"));
    await w.close();
    writeFileSync(join(w.path, "startedat"), "not a time");
    const w2 = await s.writer("broken");
    assert.equal(w2.status().offset, 0);
    await w2.write(Buffer.from("ok"));
    assert.equal(await w2.commit(2, sha256(Buffer.from("ok"))), sha256(Buffer.from("ok")));
  });

  it("refuses a total that differs from the one recorded, by starting over", async () => {
    const s = await newStore();
    const w = await s.writer("tot", 10);
    await w.write(Buffer.from("12345"));
    await w.close();
    const w2 = await s.writer("tot", 20);
    assert.equal(w2.status().offset, 0);
    assert.equal(w2.status().total, 20);
    await w2.close();
  });

  it("truncates to zero and forgets the hash", async () => {
    const s = await newStore();
    const w = await s.writer("tr");
    await w.write(Buffer.from("first"));
    await w.truncate(0);
    assert.equal(w.status().offset, 0);
    await w.write(Buffer.from("second"));
    assert.equal(await w.commit(6, sha256(Buffer.from("second"))), sha256(Buffer.from("second")));
    const w2 = await s.writer("tr2");
    await assert.rejects(w2.truncate(3), /Truncate: unsupported size/);
    await w2.close();
  });

  it("reads ranges in chunks", async () => {
    const s = await newStore();
    const data = randomBytes((2 << 20) + 12345);
    const w = await s.writer("rd");
    await w.write(data);
    const d = await w.commit(0, "");
    const ra = await s.readerAt(d);
    try {
      assert.equal(ra.size, data.length);
      assert.deepEqual(await collect(ra.stream(0, data.length)), data);
      assert.deepEqual(await collect(ra.stream(100, 5000)), data.subarray(100, 5100));
      assert.deepEqual(await collect(ra.stream(data.length - 10, 1000)), data.subarray(data.length - 10));
      const chunks: number[] = [];
      for await (const c of ra.stream(1, data.length, 1 << 20)) chunks.push(c.length);
      assert.deepEqual(chunks, [1 << 20, 1 << 20, data.length - 1 - (2 << 20)]);
      // stopping early leaves nothing dangling
      for await (const _ of ra.stream(0, data.length, 1024)) break;
      const buf = Buffer.alloc(10);
      assert.equal(await ra.readAt(buf, 50), 10);
      assert.deepEqual(buf, data.subarray(50, 60));
    } finally {
      await ra.close();
    }
    await assert.rejects(s.readerAt(sha256(Buffer.from("missing"))), rejectsKind("not found"));
  });

  it("lists, walks, deletes and aborts", async () => {
    const s = await newStore();
    const a = await s.writer("list-a", 3);
    await a.write(Buffer.from("abc"));
    const b = await s.writer("list-b");
    await b.close();
    const all = await s.listStatuses();
    assert.deepEqual(all.map((x) => x.ref).sort(), ["list-a", "list-b"]);
    const filtered = await s.listStatuses(["ref==list-a"]);
    assert.deepEqual(
      filtered.map((x) => [x.ref, x.offset, x.total]),
      [["list-a", 3, 3]],
    );
    const refs: string[] = [];
    await s.walkStatusRefs((r) => {
      refs.push(r);
    });
    assert.deepEqual(refs.sort(), ["list-a", "list-b"]);

    const d = await a.commit(3, "");
    await s.abort("list-b");
    await s.abort("list-b"); // aborting nothing is fine, as in containerd
    await assert.rejects(s.status("list-b"), rejectsKind("not found"));
    assert.deepEqual(await s.listStatuses(), []);

    const seen: string[] = [];
    await s.walk((i) => {
      seen.push(i.digest);
    });
    assert.deepEqual(seen, [d]);
    const none: string[] = [];
    await s.walk(
      (i) => {
        none.push(i.digest);
      },
      [`digest==${sha256(Buffer.from("zzz"))}`],
    );
    assert.deepEqual(none, []);
    await s.delete(d);
    await assert.rejects(s.delete(d), rejectsKind("not found", `content ${d}: not found`));
    await assert.rejects(s.info(d), rejectsKind("not found", `content ${d}: not found`));
    assert.deepEqual(readdirSync(join(s.root, "blobs", "sha256")), []);
  });

  it("aborts an ingest with its data", async () => {
    const s = await newStore();
    const w = await s.writer("ab");
    await w.write(Buffer.from("data"));
    await w.close();
    await s.abort("ab");
    assert.equal(existsSync(w.path), false);
    const w2 = await s.writer("ab");
    assert.equal(w2.status().offset, 0);
    await w2.close();
  });

  it("rejects invalid digests", async () => {
    const s = await newStore();
    assert.equal(digestError("sha256:abc"), "invalid checksum digest length");
    assert.equal(digestError("nope"), "invalid checksum digest format");
    assert.equal(digestError("md5:abc"), "unsupported digest algorithm");
    assert.equal(digestError(`sha256:${"A".repeat(64)}`), "invalid checksum digest format");
    assert.equal(digestError(sha256(Buffer.from(""))), undefined);
    await assert.rejects(s.info("sha256:abc"), rejectsKind("invalid argument"));
  });

  it("formats durations like Go", () => {
    assert.equal(goDuration(0n), "0s");
    assert.equal(goDuration(999n), "999ns");
    assert.equal(goDuration(1500n), "1.5µs");
    assert.equal(goDuration(2_000_000n), "2ms");
    assert.equal(goDuration(1_500_000_000n), "1.5s");
    assert.equal(goDuration(61_000_000_000n), "1m1s");
    assert.equal(goDuration(3_600_000_000_000n), "1h0m0s");
  });

  it("keeps writers independent per ref", async () => {
    const s = await newStore();
    const ws: LocalWriter[] = [];
    for (let i = 0; i < 5; i++) ws.push(await s.writer(`p${i}`));
    await Promise.all(ws.map((w, i) => w.write(Buffer.from(`payload ${i}`))));
    const ds = await Promise.all(ws.map((w) => w.commit(0, "")));
    assert.equal(new Set(ds).size, 5);
  });
});
