// The metadata space reserve (issue 14, full disk): on a tmpfs filled to the last byte, a write
// that frees nothing fails with SQLITE_FULL and leaves the reserve alone, while a deletion
// releases the reserve and succeeds; the reserve comes back once space does (on its retry timer,
// or when a collection asks). A snapshotter's own database on the same filesystem shares it, and
// every deletion path (containers, images, content, ingests, snapshots, leases, namespaces, the
// collector) is shown to use it. Needs root (mounts a tmpfs).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  statfsSync,
  statSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createLogger } from "../../src/base/log.js";
import { ContainerStore } from "../../src/core/containers/store.js";
import { LocalContentStore } from "../../src/core/content/local.js";
import { MetadataContentStore } from "../../src/core/content/metadata.js";
import { Exchange } from "../../src/core/events/exchange.js";
import { MetadataCollector } from "../../src/core/gc/collector.js";
import { ImageStore } from "../../src/core/images/store.js";
import { LeaseStore } from "../../src/core/leases/store.js";
import { FREES, MetadataDB } from "../../src/core/metadata/db.js";
import { RESERVE_BYTES, RESERVE_RETRY_MS } from "../../src/core/metadata/reserve.js";
import { NamespaceStore } from "../../src/core/namespaces/store.js";
import { SnapshotService } from "../../src/core/snapshots/metadata.js";
import { NativeSnapshotter } from "../../src/core/snapshots/native.js";
import { MetaStore } from "../../src/core/snapshots/storage.js";
import { makeTempDir, removeTempDir, unmountAll } from "../helpers/tmp.js";

const NS = "reserve";
const FS_BYTES = 48 << 20;
/** Labels big enough that a row spills onto overflow pages: every write is several pages. */
const BIG = { a: "x".repeat(4000), b: "y".repeat(4000) };

/** Write `path` until the filesystem has not one byte left; returns the bytes written. */
function fill(path: string): number {
  const fd = openSync(path, "a");
  let total = 0;
  try {
    for (let chunk = 1 << 20; chunk >= 1; ) {
      try {
        const n = writeSync(fd, Buffer.alloc(chunk));
        total += n;
        if (n < chunk) chunk = Math.floor(chunk / 2);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOSPC") throw err;
        chunk = Math.floor(chunk / 2);
      }
    }
  } finally {
    closeSync(fd);
  }
  return total;
}

const freeBytes = (path: string) => {
  const st = statfsSync(path);
  return st.bavail * st.bsize;
};

async function waitFor(what: string, cond: () => boolean, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("metadata space reserve on a full disk", () => {
  let tmp: string;
  let fs: string;
  let db: MetadataDB;
  let leases: LeaseStore;
  const logs: string[] = [];
  const reservePath = () => join(fs, "meta", "reserve");

  before(async () => {
    tmp = await makeTempDir("metadata-reserve");
    fs = join(tmp, "fs");
    mkdirSync(fs);
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${FS_BYTES},mode=0711`, "tmpfs", fs]);
    const log = createLogger({ level: "info", format: "text", write: (l) => logs.push(l) });
    db = new MetadataDB(join(fs, "meta", "meta.db"), { log });
    leases = new LeaseStore(db, new NamespaceStore(db, new Exchange()));
  });

  after(async () => {
    db?.close();
    if (tmp) {
      unmountAll(tmp);
      await removeTempDir(tmp);
    }
  });

  it("is written with real blocks when the database opens", () => {
    const st = statSync(reservePath());
    assert.equal(st.size, RESERVE_BYTES);
    assert.ok(st.blocks * 512 >= RESERVE_BYTES, `only ${st.blocks * 512} bytes allocated`);
    assert.ok(db.reserve?.present());
  });

  it("lets a deletion through on a full disk, and only a deletion", async () => {
    for (let i = 0; i < 20; i++) leases.create(NS, `l${i}`, BIG);
    fill(join(fs, "filler"));
    assert.equal(freeBytes(fs), 0, "the filesystem is not full");

    // a write that frees nothing fails and leaves the reserve where it is
    assert.throws(() => leases.create(NS, "more", BIG), {
      code: "SQLITE_FULL",
      message: /^writing lease "more": /,
    });
    // the same delete, not marked as freeing, fails too: only the reserve lets it through
    assert.throws(
      () => db.tx(() => db.stmt("DELETE FROM leases WHERE namespace = ? AND id = ?").run(NS, "l0")),
      { code: "SQLITE_FULL" },
    );
    assert.ok(db.reserve?.present(), "a write that frees nothing used the reserve");
    assert.ok(!logs.some((l) => /released/.test(l)), logs.join("\n"));

    // a deletion (leases delete is marked as freeing) goes through
    await leases.delete(NS, "l0", false);
    assert.equal(leases.get(NS, "l0"), undefined);
    assert.ok(!existsSync(reservePath()), "the reserve is still there");
    const line = logs.find((l) => /released the 8 MiB metadata reserve so a deletion can proceed/.test(l));
    assert.ok(line, logs.join("\n"));
    assert.match(line, /level=warning/);
    // the space is there for whatever the deletion is followed by (more deletions)
    assert.ok(freeBytes(fs) > RESERVE_BYTES / 2, `${freeBytes(fs)} bytes free after the release`);
    await leases.delete(NS, "l1", false);
    db.tx(() => db.stmt("DELETE FROM leases WHERE namespace = ? AND id = ?").run(NS, "l2"), FREES);

    // still short of room: the retry timer does not take the space back yet
    await new Promise((r) => setTimeout(r, RESERVE_RETRY_MS + 500));
    assert.ok(!existsSync(reservePath()), "re-created while the disk is still nearly full");
    assert.ok(!existsSync(`${reservePath()}.tmp`), "a partial reserve was left");

    // space freed: the timer writes the reserve again
    unlinkSync(join(fs, "filler"));
    await waitFor(
      "the reserve to come back",
      () => db.reserve?.present() === true,
      3 * RESERVE_RETRY_MS + 2000,
    );
    assert.equal(statSync(reservePath()).size, RESERVE_BYTES);
    assert.ok(
      logs.some((l) => /re-created the 8 MiB metadata reserve/.test(l)),
      logs.join("\n"),
    );
  });

  it("is re-created when a collection asks, and shared with a snapshotter's database", async () => {
    const ms = new MetaStore(join(fs, "snap", "metadata.db"));
    try {
      ms.tx(() => ms.createSnapshot("active", "s1", "", BIG));
      ms.tx(() => ms.createSnapshot("active", "s2", "", BIG));
      fill(join(fs, "filler"));
      assert.equal(freeBytes(fs), 0, "the filesystem is not full");
      // the snapshotter's removal is a deletion: it may use the metadata reserve
      assert.throws(() => ms.tx(() => ms.remove("s1")), { code: "SQLITE_FULL" });
      assert.ok(db.reserve?.present());
      ms.tx(() => ms.remove("s1"), FREES);
      assert.ok(!db.reserve?.present(), "the metadata reserve was not used");
      assert.throws(() => ms.getInfo("s1"), /does not exist/);

      // space back: a collection's end (restoreReserve) writes it at once
      unlinkSync(join(fs, "filler"));
      db.restoreReserve();
      assert.ok(db.reserve?.present(), "not re-created after the collection");
    } finally {
      ms.close();
    }
  });

  it("serves every deletion path: containers, images, content, ingests, snapshots, leases, namespaces, GC", async () => {
    const exchange = new Exchange();
    const namespaces = new NamespaceStore(db, exchange);
    const containers = new ContainerStore(db, namespaces, exchange);
    const images = new ImageStore(db, namespaces, exchange);
    const backend = await new LocalContentStore(join(fs, "content")).init();
    const content = new MetadataContentStore(db, backend, namespaces, exchange);
    const native = new NativeSnapshotter(join(fs, "native"));
    const snapshots = new SnapshotService({
      db,
      namespaces,
      events: exchange,
      snapshotters: new Map([["native", native]]),
    });
    const collector = new MetadataCollector(db);
    const digest = (i: number) => `sha256:${i.toString(16).padStart(64, "0")}`;
    const addBlob = (i: number) =>
      db.tx(() =>
        db
          .stmt(
            "INSERT INTO content (namespace, digest, size, created_at, updated_at, labels) VALUES (?, ?, 1, 0, 0, ?)",
          )
          .run(NS, digest(i), JSON.stringify(BIG)),
      );
    const paths: {
      what: string;
      setup: () => Promise<unknown> | unknown;
      del: () => Promise<unknown> | unknown;
    }[] = [
      {
        what: "container delete",
        setup: () =>
          containers.create(NS, {
            id: "c1",
            labels: BIG,
            runtime: { name: "io.containerd.runc.v2" },
            spec: {
              typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec",
              value: new Uint8Array(Buffer.from("{}")),
            },
          }),
        del: () => containers.delete(NS, "c1"),
      },
      {
        what: "image delete",
        setup: () =>
          images.create(NS, {
            name: "example.com/i:1",
            labels: BIG,
            target: { mediaType: "application/vnd.oci.image.manifest.v1+json", digest: digest(1), size: 1 },
          }),
        del: () => images.delete(NS, "example.com/i:1"),
      },
      { what: "content delete", setup: () => addBlob(2), del: () => content.delete(NS, digest(2)) },
      {
        what: "ingest abort",
        setup: () =>
          db.tx(() =>
            db.stmt("INSERT INTO ingests (namespace, ref, expected) VALUES (?, ?, ?)").run(NS, "r1", BIG.a),
          ),
        del: () => content.abort(NS, "r1"),
      },
      {
        what: "snapshot remove",
        setup: () => snapshots.get("native").prepare(NS, "s1", "", BIG),
        del: () => snapshots.get("native").remove(NS, "s1"),
      },
      {
        what: "lease resource delete",
        setup: () => {
          leases.create(NS, "res", BIG);
          for (let i = 100; i < 160; i++) leases.addResource(NS, "res", { id: digest(i), type: "content" });
        },
        del: () => leases.deleteResource(NS, "res", { id: digest(130), type: "content" }),
      },
      {
        what: "namespace delete",
        setup: () => namespaces.create("gone", BIG, NS),
        del: () => namespaces.delete("gone", NS),
      },
      {
        // unreferenced blobs: the collection's own transaction deletes them
        what: "garbage collection",
        setup: () => {
          for (let i = 10; i < 14; i++) addBlob(i);
        },
        del: async () => assert.ok((await collector.collect()).removed >= 4),
      },
    ];
    try {
      for (const p of paths) {
        await p.setup();
        assert.ok(db.reserve?.present(), `no reserve before ${p.what}`);
        fill(join(fs, "filler"));
        assert.equal(freeBytes(fs), 0, "the filesystem is not full");
        const released = logs.filter((l) => /released the 8 MiB/.test(l)).length;
        await p.del();
        assert.ok(!db.reserve?.present(), `${p.what} did not need the reserve (the test's premise)`);
        assert.equal(logs.filter((l) => /released the 8 MiB/.test(l)).length, released + 1, p.what);
        unlinkSync(join(fs, "filler"));
        db.restoreReserve();
      }
    } finally {
      if (existsSync(join(fs, "filler"))) unlinkSync(join(fs, "filler"));
      await snapshots.settled();
      await native.close();
    }
  });

  it("is left out, without debris, when there is no room for it at start", () => {
    const filler = join(fs, "filler");
    try {
      // less than the reserve would need, more than a database does
      fill(filler);
      execFileSync("truncate", ["-s", `-${RESERVE_BYTES + (1 << 20)}`, filler]);
      const lines: string[] = [];
      const log = createLogger({ level: "info", format: "text", write: (l) => lines.push(l) });
      const other = new MetadataDB(join(fs, "other", "meta.db"), { log });
      try {
        assert.ok(!other.reserve?.present());
        assert.ok(!existsSync(join(fs, "other", "reserve")));
        assert.ok(!existsSync(join(fs, "other", "reserve.tmp")));
        assert.ok(
          lines.some((l) => /level=info .*no room for the 8 MiB metadata space reserve/.test(l)),
          lines.join("\n"),
        );
        // the database works without it
        new LeaseStore(other, new NamespaceStore(other, new Exchange())).create(NS, "x", {});
      } finally {
        other.close();
      }
    } finally {
      unlinkSync(filler);
    }
  });
});
