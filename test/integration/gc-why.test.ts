// Issue 12 item 3 and issue 14's reusable check: `berth gc why`, `berth gc prune` and `berth check`
// against a real berthd, with an image pulled from the local registry.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Leases } from "../../src/gen/containerd/services/leases/v1/leases_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { berth, ctr, ok, run } from "../helpers/ctr.js";
import { type Daemon, GC_OFF_CONFIG, restartDaemon, startBerthd } from "../helpers/daemons.js";
import { type RegistryWithBusybox, registryWithBusybox } from "../helpers/fixtures.js";
import { makeTempDir, mountsUnder, removeTempDir } from "../helpers/tmp.js";

const sha = (s: string | Buffer) => `sha256:${createHash("sha256").update(s).digest("hex")}`;
const CONTENT = "io.containerd.content.v1.content";
const OVERLAY = "io.containerd.snapshotter.v1.overlayfs";

describe("berth gc why / gc prune / check (berthd)", () => {
  let d: Daemon;
  let fx: RegistryWithBusybox;
  let tmp: string;
  let conn: Connection;

  before(async () => {
    tmp = await makeTempDir("gc-why");
    fx = await registryWithBusybox("gcwhy/busybox");
    // No collection unless asked: what the test sets up must stay until it is explained.
    d = await startBerthd({ config: GC_OFF_CONFIG });
    conn = new Connection(d.address);
    ok(await berth(d.address, ["images", "pull", "--plain-http", fx.ref1]), "pull");
  });
  after(async () => {
    conn?.close();
    await d?.cleanup();
    await fx?.reg.cleanup();
    await removeTempDir(tmp);
  });

  const blobPath = (digest: string) => join(d.root, CONTENT, "blobs", "sha256", digest.slice(7));
  async function ingest(name: string, text: string): Promise<string> {
    const f = join(tmp, name);
    writeFileSync(f, text);
    ok(await ctr(d.address, ["content", "ingest", `ref-${name}`], { input: { file: f } }), `ingest ${name}`);
    return sha(text);
  }

  it("why: a layer is kept by its image through the manifest", async () => {
    const img = fx.single.platforms[0]!;
    const layer = img.layers[0]!.digest;
    const out = ok(await berth(d.address, ["gc", "why", layer]), "gc why layer");
    assert.match(out, new RegExp(`^content ${layer} is kept by`, "m"));
    const chain = `image ${fx.ref1} → manifest ${img.manifest.digest} → layer ${layer} [containerd.io/gc.ref.content.l.0]`;
    assert.ok(out.includes(chain), `chain ${chain} in:\n${out}`);
    const cfg = ok(await berth(d.address, ["gc", "why", img.config.digest]));
    assert.match(cfg, /→ config sha256:[0-9a-f]{64} \[containerd\.io\/gc\.ref\.content\.config\]/);
    // the image itself is a root
    const self = ok(await berth(d.address, ["gc", "why", fx.ref1]));
    assert.match(self, new RegExp(`^image ${fx.ref1} is kept by 1 chain`, "m"));
  });

  it("why: a blob held by a lease, and by nothing (which the collector then removes)", async () => {
    const leased = await ingest("leased", "held by a lease\n");
    const loose = await ingest("loose", "held by nothing\n");
    const leases = conn.client(Leases);
    await leases.create(
      { id: "why-lease", labels: { "containerd.io/gc.expire": "2999-01-01T00:00:00Z" } },
      { namespace: "default" },
    );
    await leases.addResource(
      { id: "why-lease", resource: { id: leased, type: "content" } },
      { namespace: "default" },
    );

    const out = ok(await berth(d.address, ["gc", "why", leased]));
    assert.ok(out.includes(`lease why-lease → content ${leased}`), out);
    const lease = ok(await berth(d.address, ["gc", "why", "why-lease"]));
    assert.match(lease, /^lease why-lease is kept by 1 chain/m);
    assert.match(lease, /expires at 2999-01-01T00:00:00Z/);

    const free = ok(await berth(d.address, ["gc", "why", loose]));
    assert.match(free, new RegExp(`^content ${loose} is collectable`, "m"));
    const missing = await berth(d.address, ["gc", "why", sha("never stored")]);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /not found/);

    // The collector agrees: what why calls collectable goes, what it explains stays.
    ok(await berth(d.address, ["gc"]), "gc");
    assert.equal(existsSync(blobPath(loose)), false, "collectable blob collected");
    assert.equal(existsSync(blobPath(leased)), true, "leased blob kept");
    assert.equal(existsSync(blobPath(fx.single.platforms[0]!.layers[0]!.digest)), true, "image layer kept");
    await leases.delete({ id: "why-lease", sync: true }, { namespace: "default" });
  });

  it("check passes on a clean daemon", async () => {
    const out = ok(await berth(d.address, ["check"]), "check");
    assert.match(out, /checked 1 images, \d+ blobs hashed, \d+ snapshots, 0 tasks: 0 errors, 0 warnings/);
  });

  it("prune after a crash removes exactly the debris, and the image still runs", async () => {
    // a snapshot whose directory the crash lost: prepared now, its directory removed below
    ok(await ctr(d.address, ["snapshots", "prepare", "crash-active"]));
    const snapDir = join(d.root, OVERLAY, "snapshots");
    const ids = readdirSync(snapDir)
      .filter((n) => /^\d+$/.test(n))
      .map(Number);
    const crashId = String(Math.max(...ids));
    await d.kill9();
    d = await restartDaemon(d);
    conn.close();
    conn = new Connection(d.address);

    const before = new Set(readdirSync(snapDir));
    // debris: a snapshot directory without a record, a record without its directory, a blob
    // without a record and an ingest without one
    mkdirSync(join(snapDir, "424242", "fs"), { recursive: true });
    writeFileSync(join(snapDir, "424242", "fs", "junk"), "junk");
    await import("node:fs/promises").then((fs) => fs.rm(join(snapDir, crashId), { recursive: true }));
    const orphanData = "an orphan blob\n";
    const orphanBlob = blobPath(sha(orphanData));
    writeFileSync(orphanBlob, orphanData);
    const ingestDir = join(d.root, CONTENT, "ingest", "f".repeat(64));
    mkdirSync(ingestDir, { recursive: true });
    writeFileSync(join(ingestDir, "ref"), "default/1/crashed-ingest");
    writeFileSync(join(ingestDir, "data"), "partial");

    const chk = await berth(d.address, ["check"]);
    assert.equal(chk.code, 1, `check fails on a record without its data:\n${chk.stdout}`);
    assert.match(chk.stdout, /^error: missing-snapshot-dir overlayfs:default\/\d+\/crash-active:/m);

    const dry = ok(await berth(d.address, ["gc", "prune", "--dry-run"]), "prune --dry-run");
    const listed = dry
      .trim()
      .split("\n")
      .map((l) => l.split("\t").slice(0, 3));
    const objects = listed.map(([, kind, object]) => `${kind} ${object}`).sort();
    assert.deepEqual(
      objects,
      [
        `blob ${orphanBlob}`,
        `ingest ${ingestDir}`,
        `snapshot-dir ${join(snapDir, "424242")}`,
        `snapshot-record overlayfs:${objects.find((o) => o.startsWith("snapshot-record"))!.split(":")[1]}`,
        `snapshot-row overlayfs:default/crash-active`,
      ].sort(),
      dry,
    );
    assert.ok(listed.every(([status]) => status === "would remove"));
    // a dry run changes nothing
    assert.equal(existsSync(orphanBlob), true);
    assert.equal(existsSync(join(snapDir, "424242")), true);

    const yes = ok(await berth(d.address, ["gc", "prune", "--yes"]), "prune --yes");
    assert.equal(yes.trim().split("\n").length, 5, yes);
    assert.ok(
      yes
        .trim()
        .split("\n")
        .every((l) => l.startsWith("removed\t")),
      yes,
    );
    assert.equal(existsSync(orphanBlob), false);
    assert.equal(existsSync(ingestDir), false);
    assert.equal(existsSync(join(snapDir, "424242")), false);
    assert.doesNotMatch(ok(await ctr(d.address, ["snapshots", "ls"])), /crash-active/);
    // nothing else went: every other snapshot directory is still there
    for (const n of before) if (n !== crashId) assert.ok(existsSync(join(snapDir, n)), `kept ${n}`);
    for (const b of fx.single.blobs)
      if (fx.single.platforms[0]!.layers.includes(b) || b === fx.single.target)
        assert.ok(existsSync(blobPath(b.digest)), `kept ${b.digest}`);

    assert.match(ok(await berth(d.address, ["gc", "prune", "--dry-run"])), /^nothing to prune$/m);
    const clean = ok(await berth(d.address, ["check", "--strict"]), "check after prune");
    assert.match(clean, /0 errors, 0 warnings/);
    const run = ok(await ctr(d.address, ["run", "--rm", fx.ref1, "gcwhy-run", "echo", "still-works"]), "run");
    assert.match(run, /still-works/);
  });

  it("prune takes a stale bundle and its leaked mount, never a running task's; check names an orphaned shim", async () => {
    ok(await ctr(d.address, ["run", "-d", fx.ref1, "gcwhy-live", "busybox", "sleep", "300"]), "run -d");
    const tasksDir = join(d.state, "io.containerd.runtime.v2.task", "default");
    const liveRootfs = join(tasksDir, "gcwhy-live", "rootfs");
    const ghost = join(tasksDir, "ghost");
    mkdirSync(join(ghost, "rootfs"), { recursive: true });
    ok(await run("mount", ["-t", "tmpfs", "gcwhy-leak", join(ghost, "rootfs")]), "mount tmpfs");
    // a process that looks like a shim of this daemon for a task it does not know
    const idle = join(tmp, "idle.js");
    writeFileSync(idle, "setTimeout(() => {}, 300000);\n");
    const fake = spawn(
      process.execPath,
      [idle, "-namespace", "default", "-id", "ghost", "-address", d.address],
      {
        argv0: "containerd-shim-runc-v2",
        stdio: "ignore",
      },
    );
    try {
      const chk = await berth(d.address, ["check"]);
      assert.equal(chk.code, 0, `warnings only:\n${chk.stdout}${chk.stderr}`);
      assert.match(chk.stdout, new RegExp(`^warning: stale-bundle ${ghost}: no task default/ghost$`, "m"));
      assert.match(chk.stdout, new RegExp(`^warning: leaked-mount ${join(ghost, "rootfs")}:`, "m"));
      assert.match(
        chk.stdout,
        new RegExp(`^warning: orphaned-shim pid ${fake.pid}: shim for default/ghost`, "m"),
      );
      assert.match(chk.stdout, / 1 tasks: 0 errors, 3 warnings/);
      assert.doesNotMatch(chk.stdout, /gcwhy-live/);
      assert.equal((await berth(d.address, ["check", "--strict"])).code, 1, "--strict fails on warnings");

      const dry = ok(await berth(d.address, ["gc", "prune", "--dry-run"]));
      assert.deepEqual(
        dry
          .trim()
          .split("\n")
          .map((l) => l.split("\t").slice(0, 3).join(" ")),
        [`would remove mount ${join(ghost, "rootfs")}`, `would remove bundle ${ghost}`],
      );
      ok(await berth(d.address, ["gc", "prune", "--yes"]), "prune --yes");
      assert.equal(existsSync(ghost), false, "stale bundle removed");
      assert.equal(mountsUnder(ghost).length, 0, "leaked mount gone");
      assert.ok(
        mountsUnder(join(tasksDir, "gcwhy-live")).includes(liveRootfs),
        "running task's rootfs still mounted",
      );
      assert.match(ok(await ctr(d.address, ["tasks", "ls"])), /gcwhy-live\s+\d+\s+RUNNING/);
    } finally {
      fake.kill("SIGKILL");
      await run("umount", [join(ghost, "rootfs")]).catch(() => {});
    }
    ok(await ctr(d.address, ["tasks", "kill", "-s", "SIGKILL", "gcwhy-live"]));
    for (let i = 0; i < 100 && /RUNNING/.test(ok(await ctr(d.address, ["tasks", "ls"]))); i++)
      await new Promise((r) => setTimeout(r, 100));
    ok(await ctr(d.address, ["tasks", "rm", "gcwhy-live"]));
    ok(await ctr(d.address, ["containers", "rm", "gcwhy-live"]));
    assert.match(ok(await berth(d.address, ["check", "--strict"])), /0 tasks: 0 errors, 0 warnings/);
  });

  it("check fails on a corrupted layer blob, naming its digest", async () => {
    const layer = fx.single.platforms[0]!.layers[0]!.digest;
    const p = blobPath(layer);
    const original = readFileSync(p);
    chmodSync(p, 0o644);
    const fd = openSync(p, "r+");
    writeSync(fd, Buffer.from([original[10]! ^ 0xff]), 0, 1, 10);
    closeSync(fd);
    try {
      const r = await berth(d.address, ["check"]);
      assert.equal(r.code, 1, r.stdout);
      assert.match(
        r.stdout,
        new RegExp(
          `^error: corrupt-blob ${layer}: image ${fx.ref1} \\(default\\): .* hashes to sha256:`,
          "m",
        ),
      );
      // --quick does not hash: the file is there
      assert.equal((await berth(d.address, ["check", "--quick"])).code, 0);
    } finally {
      writeFileSync(p, original);
    }
  });
});
