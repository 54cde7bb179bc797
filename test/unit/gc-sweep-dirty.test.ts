// The collector sweeps a backend only when it may hold data no row points at: rows of that backend
// went (in this collection, or marked by a store), or it is the first collection since start.
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

before(() => {
  dir = mkdtempSync(path.join(tmpdir(), "gc-dirty-"));
  md = openTestMetadata(dir);
  gc = new MetadataCollector(md.db);
  for (const kind of ["content", "snapshots/overlayfs"])
    gc.addSweeper({
      kind,
      sweep: async () => {
        swept.push(kind);
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
  await fn();
  return [...swept].sort();
}

test("the first collection after start sweeps every backend", async () => {
  assert.deepEqual(await sweptBy(() => gc.collect()), ["always", "content", "snapshots/overlayfs"]);
});

test("with nothing removed since, only kind-less sweepers run", async () => {
  assert.deepEqual(await sweptBy(() => gc.collect()), ["always"]);
});

test("a store's mark sweeps that backend once", async () => {
  md.db.markBackendDirty("content");
  assert.deepEqual(await sweptBy(() => gc.collect()), ["always", "content"]);
  assert.deepEqual(await sweptBy(() => gc.collect()), ["always"]);
});

test("content rows the collection removes make the blob store swept", async () => {
  md.namespaces.ensure("ns");
  const now = Date.now();
  md.db
    .stmt(
      "INSERT INTO content (namespace, digest, size, created_at, updated_at, labels) VALUES (?, ?, 1, ?, ?, '{}')",
    )
    .run("ns", `sha256:${"a".repeat(64)}`, now, now);
  assert.deepEqual(await sweptBy(() => gc.collect()), ["always", "content"]);
});

test("full sweeps everything", async () => {
  assert.deepEqual(await sweptBy(() => gc.collect({ full: true })), [
    "always",
    "content",
    "snapshots/overlayfs",
  ]);
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
