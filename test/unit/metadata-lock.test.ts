// The daemon's SQLite files are held by one process (openDaemonDatabase): EXCLUSIVE locking keeps
// the WAL index in memory, so no `-shm` file is used, and a second opener of the same file (a
// second daemon on the same root) fails with an error naming the file instead of sharing it.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { MetadataDB } from "../../src/core/metadata/db.js";
import { MetaStore } from "../../src/core/snapshots/storage.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

describe("the daemon's databases are its own", () => {
  let dir: string;
  before(async () => {
    dir = await makeTempDir("metadata-lock");
  });
  after(async () => {
    await removeTempDir(dir);
  });

  it("meta.db: a second opener is refused while the first holds it", () => {
    const path = join(dir, "meta", "meta.db");
    const first = new MetadataDB(path, { reserveBytes: 0 });
    first.sql
      .prepare("INSERT INTO namespaces (name, labels, created_at, updated_at) VALUES ('n', '{}', 1, 1)")
      .run();
    assert.equal(existsSync(`${path}-wal`), true, "WAL mode");
    assert.equal(existsSync(`${path}-shm`), false, "no shared-memory index");
    assert.throws(
      () => new MetadataDB(path, { reserveBytes: 0, lockTimeoutMs: 50 }),
      (err: Error) => err.message.includes(path) && /locked by another process/.test(err.message),
    );
    first.close();
    const second = new MetadataDB(path, { reserveBytes: 0, lockTimeoutMs: 50 });
    assert.ok(second.sql.prepare("SELECT 1 FROM namespaces WHERE name = 'n'").get(), "the row survived");
    second.close();
  });

  it("a snapshotter's metadata.db: the same", () => {
    const path = join(dir, "snap", "metadata.db");
    const first = new MetaStore(path);
    assert.equal(existsSync(`${path}-shm`), false);
    assert.throws(() => new MetaStore(path, 50), /locked by another process/);
    first.close();
    new MetaStore(path).close();
  });
});
