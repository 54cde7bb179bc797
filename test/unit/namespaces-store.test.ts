// NamespaceStore serves reads from an in-memory copy of its table: every write must show in the
// next read, and a write rolled back with its transaction must not.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { kind } from "../helpers/assert.js";
import { openTestMetadata, type TestMetadata } from "../helpers/metadata.js";

let dir: string;
let md: TestMetadata;
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), "ns-store-"));
  md = openTestMetadata(dir);
});
after(() => {
  md.close();
  rmSync(dir, { recursive: true, force: true });
});

test("create, update and delete show in the next get and list", () => {
  const ns = md.namespaces;
  assert.deepEqual(ns.list(), []);
  ns.create("b", { x: "1" }, "b");
  ns.create("a", {}, "a");
  assert.deepEqual(
    ns.list().map((n) => n.name),
    ["a", "b"],
  );
  ns.update("b", { y: "2" }, ["labels.y"], "b");
  assert.deepEqual(ns.get("b")?.labels, { x: "1", y: "2" });
  ns.delete("a", "a");
  assert.equal(ns.get("a"), undefined);
  assert.throws(() => ns.create("b", {}, "b"), kind("already exists"));
});

test("a returned namespace is a copy: changing it changes nothing stored", () => {
  const got = md.namespaces.get("b")!;
  got.labels.z = "3";
  assert.equal(md.namespaces.get("b")?.labels.z, undefined);
});

test("an implicit creation rolled back with its transaction leaves no namespace behind", () => {
  assert.throws(() =>
    md.db.tx(() => {
      md.namespaces.ensure("rolled");
      // read inside the transaction: the uncommitted row is visible, and must not be kept
      assert.ok(md.namespaces.get("rolled"));
      throw new Error("abort");
    }),
  );
  assert.equal(md.namespaces.get("rolled"), undefined);
  md.namespaces.ensure("kept");
  assert.deepEqual(md.namespaces.get("kept"), { name: "kept", labels: {} });
  // a second store on the same database sees the same rows
  const rows = md.db.stmt("SELECT name FROM namespaces ORDER BY name").all() as { name: string }[];
  assert.deepEqual(
    rows.map((r) => r.name),
    md.namespaces.list().map((n) => n.name),
  );
});

test("a namespace deleted and created again is seen again by ensure", () => {
  md.namespaces.ensure("again");
  md.namespaces.delete("again", "again");
  md.namespaces.ensure("again");
  const row = md.db.stmt("SELECT name FROM namespaces WHERE name = ?").get("again");
  assert.ok(row, "ensure after a delete writes the row again");
});
