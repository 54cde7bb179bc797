// The collector sweeps a backend only when it may hold data no row points at: rows of that backend
// went (in this collection, or marked by a store), or it is the first collection since start. When
// it knows which names' rows went (blobs' digests), the sweep is given those alone.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { MetadataCollector } from "../../src/core/gc/collector.js";
import { openTestMetadata, type TestMetadata } from "../helpers/metadata.js";

let dir: string;
let md: TestMetadata;
let gc: MetadataCollector;
const swept: string[] = [];
/** What each kind's last sweep was given: the names to look at, or "all". */
const scopes = new Map<string, string[] | "all">();

before(() => {
  dir = mkdtempSync(path.join(tmpdir(), "gc-dirty-"));
  md = openTestMetadata(dir);
  gc = new MetadataCollector(md.db);
  for (const kind of ["content", "snapshots/overlayfs"])
    gc.addSweeper({
      kind,
      sweep: async (only) => {
        swept.push(kind);
        scopes.set(kind, only ? [...only].sort() : "all");
        return 0;
      },
    });
  gc.addSweeper({
    sweep: async () => {
      swept.push("always");
      return 0;
    },
  });
});
after(() => {
  md.close();
  rmSync(dir, { recursive: true, force: true });
});

async function sweptBy(fn: () => Promise<unknown>): Promise<string[]> {
  swept.length = 0;
  scopes.clear();
  await fn();
  return [...swept].sort();
}

test("the first collection after start sweeps every backend, all of each", async () => {
  assert.deepEqual(await sweptBy(() => gc.collect()), ["always", "content", "snapshots/overlayfs"]);
  assert.equal(scopes.get("content"), "all");
  assert.equal(scopes.get("snapshots/overlayfs"), "all");
});

test("with nothing removed since, only kind-less sweepers run", async () => {
  assert.deepEqual(await sweptBy(() => gc.collect()), ["always"]);
});

test("a store's mark sweeps that backend once", async () => {
  md.db.markBackendDirty("content");
  assert.deepEqual(await sweptBy(() => gc.collect()), ["always", "content"]);
  assert.equal(scopes.get("content"), "all");
  assert.deepEqual(await sweptBy(() => gc.collect()), ["always"]);
});

const digest = (c: string) => `sha256:${c.repeat(64)}`;

function insertBlob(d: string): void {
  md.namespaces.ensure("ns");
  const now = Date.now();
  md.db
    .stmt(
      "INSERT INTO content (namespace, digest, size, created_at, updated_at, labels) VALUES (?, ?, 1, ?, ?, '{}')",
    )
    .run("ns", d, now, now);
}

test("content rows the collection removes make the blob store swept, for those digests only", async () => {
  insertBlob(digest("a"));
  insertBlob(digest("b"));
  assert.deepEqual(await sweptBy(() => gc.collect()), ["always", "content"]);
  assert.deepEqual(scopes.get("content"), [digest("a"), digest("b")]);
});

test("marks with names add up until a sweep; one without names widens it to all", async () => {
  md.db.markBackendDirty("content", [digest("c")]);
  md.db.markBackendDirty("content", [digest("d")]);
  insertBlob(digest("e"));
  assert.deepEqual(await sweptBy(() => gc.collect()), ["always", "content"]);
  assert.deepEqual(scopes.get("content"), [digest("c"), digest("d"), digest("e")]);
  // no names: an ingest went, not a blob; the sweep still runs (it looks at the ingests)
  md.db.markBackendDirty("content", []);
  assert.deepEqual(await sweptBy(() => gc.collect()), ["always", "content"]);
  assert.deepEqual(scopes.get("content"), []);
  md.db.markBackendDirty("content", [digest("f")]);
  md.db.markBackendDirty("content");
  md.db.markBackendDirty("content", [digest("g")]);
  assert.deepEqual(await sweptBy(() => gc.collect()), ["always", "content"]);
  assert.equal(scopes.get("content"), "all");
});

test("full sweeps everything, all of each", async () => {
  md.db.markBackendDirty("content", [digest("h")]);
  assert.deepEqual(await sweptBy(() => gc.collect({ full: true })), [
    "always",
    "content",
    "snapshots/overlayfs",
  ]);
  assert.equal(scopes.get("content"), "all");
});

test("a sweep that fails is tried again by the next collection", async () => {
  let fail = true;
  gc.addSweeper({
    kind: "flaky",
    sweep: async () => {
      swept.push("flaky");
      if (fail) throw new Error("disk went away");
      return 0;
    },
  });
  md.db.markBackendDirty("flaky");
  await assert.rejects(gc.collect(), /disk went away/);
  fail = false;
  assert.ok((await sweptBy(() => gc.collect())).includes("flaky"));
});

test("a sweep of some names that fails is tried again on the same names, and so are the backends after it", async () => {
  let fail = true;
  let given: string[] | "all" | undefined;
  let after: string[] | "all" | undefined;
  gc.addSweeper({
    kind: "flaky-names",
    sweep: async (only) => {
      given = only ? [...only].sort() : "all";
      if (fail) throw new Error("disk went away again");
      return 0;
    },
  });
  gc.addSweeper({
    kind: "after-flaky",
    sweep: async (only) => {
      after = only ? [...only].sort() : "all";
      return 0;
    },
  });
  md.db.markBackendDirty("flaky-names", ["x", "y"]);
  md.db.markBackendDirty("after-flaky", ["z"]);
  await assert.rejects(gc.collect(), /disk went away again/);
  assert.deepEqual(given, ["x", "y"]);
  assert.equal(after, undefined, "not reached");
  fail = false;
  given = undefined;
  await gc.collect();
  assert.deepEqual(given, ["x", "y"]);
  assert.deepEqual(after, ["z"]);
  given = undefined;
  after = undefined;
  await gc.collect();
  assert.equal(given, undefined, "swept once, not again");
  assert.equal(after, undefined, "swept once, not again");
});
