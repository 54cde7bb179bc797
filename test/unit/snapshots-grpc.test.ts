// The Snapshots gRPC service on a real socket, driven by the real ctr and by berth's
// `snapshots` commands side by side (same server, same answers). Needs root and /usr/bin/ctr.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { DescService } from "@bufbuild/protobuf";
import { Command } from "commander";
import type { CliContext, Wire } from "../../src/cmd/berth/context.js";
import { formatTree, humanBytes, registerSnapshots } from "../../src/cmd/berth/snapshots.js";
import { Exchange } from "../../src/core/events/exchange.js";
import { LeaseStore } from "../../src/core/leases/store.js";
import { MetadataDB } from "../../src/core/metadata/db.js";
import { mountAll, unmountAll } from "../../src/core/mount/mount.js";
import { NamespaceStore } from "../../src/core/namespaces/store.js";
import { SnapshotService } from "../../src/core/snapshots/metadata.js";
import { NativeSnapshotter } from "../../src/core/snapshots/native.js";
import { OverlaySnapshotter } from "../../src/core/snapshots/overlay.js";
import type { Snapshotter } from "../../src/core/snapshots/snapshotter.js";
import { Leases } from "../../src/gen/containerd/services/leases/v1/leases_pb.js";
import { Snapshots } from "../../src/gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { type CallOptions, Connection } from "../../src/grpc/client.js";
import { H2GrpcServer } from "../../src/grpc/h2server.js";
import { leasesService } from "../../src/services/leases.js";
import { snapshotsService } from "../../src/services/snapshots.js";
import { CTR_BIN, ctr, ok } from "../helpers/ctr.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

let dir: string;
let sock: string;
let server: H2GrpcServer;
let db: MetadataDB;
let svc: SnapshotService;
let overlay: OverlaySnapshotter;
let native: NativeSnapshotter;
let conn: Connection;

/** Run `berth snapshots …` in-process against the test server; returns stdout. */
async function berthSnap(args: string[], namespace = "default"): Promise<string> {
  const fake = {
    namespace,
    client: async <S extends DescService>(s: S) => conn.client(s),
    call: (extra: Partial<CallOptions> = {}) => ({ namespace, ...extra }),
    stream: (extra: Partial<CallOptions> = {}) => ({ namespace, ...extra }),
  } as unknown as CliContext;
  const wire: Wire =
    (handler) =>
    async (...a) =>
      handler(fake, a[a.length - 1] as Command);
  const program = new Command("berth").exitOverride();
  registerSnapshots(program, wire);
  const out: string[] = [];
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((chunk: string | Uint8Array) => {
    out.push(typeof chunk === "string" ? chunk : Buffer.from(chunk).toString());
    return true;
  }) as typeof process.stdout.write;
  try {
    await program.parseAsync(["snapshots", ...args], { from: "user" });
  } finally {
    process.stdout.write = write;
  }
  return out.join("");
}

const ctrSnap = async (args: string[], namespace?: string) =>
  ok(await ctr(sock, ["snapshots", ...args], { namespace }), `ctr snapshots ${args.join(" ")}`);

describe("snapshots gRPC service with ctr and berth", { skip: !existsSync(CTR_BIN) && "no ctr" }, () => {
  before(async () => {
    dir = await makeTempDir("snap-grpc");
    sock = join(dir, "s.sock");
    db = new MetadataDB(join(dir, "meta.db"));
    const events = new Exchange();
    const namespaces = new NamespaceStore(db, events);
    overlay = new OverlaySnapshotter(join(dir, "io.containerd.snapshotter.v1.overlayfs"), {
      asyncRemove: true,
    });
    native = new NativeSnapshotter(join(dir, "io.containerd.snapshotter.v1.native"));
    svc = new SnapshotService({
      db,
      namespaces,
      events,
      snapshotters: new Map<string, Snapshotter>([
        ["overlayfs", overlay],
        ["native", native],
      ]),
    });
    server = new H2GrpcServer();
    server.addService(Snapshots, snapshotsService(svc));
    server.addService(Leases, leasesService(new LeaseStore(db, namespaces)));
    await server.listen(sock);
    conn = new Connection(`unix:${sock}`);
  });

  after(async () => {
    conn?.close();
    await server?.tryShutdown();
    await svc?.settled();
    await overlay?.close();
    await native?.close();
    db?.close();
    if (dir) await removeTempDir(dir);
  });

  it("serves ctr's snapshot commands with containerd's output", async () => {
    const root = join(dir, "io.containerd.snapshotter.v1.overlayfs", "snapshots");
    assert.equal(
      await ctrSnap(["prepare", "--target", "/mnt/x", "base"]),
      `mount -t bind ${root}/1/fs /mnt/x -o rw,rbind\n`,
    );
    // fill the base through its mount
    const mnt = join(dir, "mnt");
    mkdirSync(mnt);
    mountAll(await svc.get("overlayfs").mounts("default", "base"), mnt);
    try {
      writeFileSync(join(mnt, "hello"), "world");
    } finally {
      unmountAll(mnt);
    }
    await ctrSnap(["commit", "base-c", "base"]);
    await ctrSnap(["prepare", "child", "base-c"]);
    await ctrSnap(["commit", "child-c", "child"]);
    const idx = existsSync("/sys/module/overlay/parameters/index") ? "index=off," : "";
    assert.equal(
      await ctrSnap(["prepare", "-t", "/mnt/z", "act", "child-c"]),
      `mount -t overlay overlay /mnt/z -o ${idx}workdir=${root}/3/work,upperdir=${root}/3/fs,lowerdir=${root}/2/fs:${root}/1/fs\n`,
    );
    assert.equal(
      await ctrSnap(["view", "-t", "/mnt/v", "v1", "base-c"]),
      `mount -t bind ${root}/1/fs /mnt/v -o ro,rbind\n`,
    );
    await ctrSnap(["view", "v2", "child-c"]);
    await berthSnap(["view", "v0"]);

    const ls = await ctrSnap(["ls"]);
    assert.equal(
      ls,
      [
        "KEY     PARENT  KIND      ",
        "act     child-c Active    ",
        "base-c          Committed ",
        "child-c base-c  Committed ",
        "v0              View      ",
        "v1      base-c  View      ",
        "v2      child-c View      ",
        "",
      ].join("\n"),
    );
    assert.equal(await berthSnap(["ls"]), ls);
    const tree = await ctrSnap(["tree"]);
    assert.equal(tree, " base-c\n  \\_ child-c\n    \\_ act\n    \\_ v2\n  \\_ v1\n v0\n");
    assert.equal(await berthSnap(["tree"]), tree);
    assert.equal(await berthSnap(["mounts", "/mnt/z", "act"]), await ctrSnap(["mounts", "/mnt/z", "act"]));
    assert.equal(await berthSnap(["usage", "-b"]), await ctrSnap(["usage", "-b"]));
    assert.equal(await berthSnap(["usage", "act", "base-c"]), await ctrSnap(["usage", "act", "base-c"]));
    assert.match(await berthSnap(["usage", "base-c"]), /base-c\s+\d+\.\d (B|KiB) +\d+ +\n/);
    assert.equal(await berthSnap(["info", "act"]), await ctrSnap(["info", "act"]));
    const info = JSON.parse(await ctrSnap(["info", "act"])) as Record<string, unknown>;
    assert.equal(info["Kind"], "Active");
    assert.equal(info["Parent"], "child-c");
    assert.ok((info["Labels"] as Record<string, string>)["containerd.io/gc.root"]);

    // labels: set, remove, show
    assert.deepEqual(
      (await ctrSnap(["label", "act", "foo=bar", "x=1"])).trim().split(",").sort(),
      [
        "containerd.io/gc.root=" + (info["Labels"] as Record<string, string>)["containerd.io/gc.root"],
        "foo=bar",
        "x=1",
      ].sort(),
    );
    assert.deepEqual(
      (await berthSnap(["label", "act", "x="])).trim().split(",").sort(),
      [
        "containerd.io/gc.root=" + (info["Labels"] as Record<string, string>)["containerd.io/gc.root"],
        "foo=bar",
      ].sort(),
    );

    // the lower layer's file is visible in the active snapshot's mount
    mountAll(await svc.get("overlayfs").mounts("default", "act"), mnt);
    try {
      assert.equal(readFileSync(join(mnt, "hello"), "utf8"), "world");
    } finally {
      unmountAll(mnt);
    }
  });

  it("fails like containerd", async () => {
    const fail = async (args: string[], message: string) => {
      const r = await ctr(sock, ["snapshots", ...args]);
      assert.equal(r.code, 1, `ctr ${args.join(" ")}: ${r.stdout}`);
      assert.equal(r.stderr.trim(), `ctr: ${message}`);
      await assert.rejects(berthSnap(args), (err: Error) => {
        assert.equal(err.message, message);
        return true;
      });
    };
    await fail(
      ["rm", "base-c"],
      'failed to remove "base-c": cannot remove snapshot with child: failed precondition',
    );
    await fail(
      ["commit", "n2", "base-c"],
      'failed to commit snapshot: snapshot "default/2/base-c" is not active: failed precondition',
    );
    await fail(
      ["prepare", "p3", "act"],
      'failed to create snapshot: parent "default/5/act" is not committed snapshot: invalid argument',
    );
    await fail(["prepare", "p3", "nonexist"], "parent snapshot nonexist does not exist: not found");
    await fail(["prepare", "act"], 'snapshot "act": already exists');
    await fail(["--snapshotter", "foo", "ls"], "snapshotter not loaded: foo: invalid argument");
    await fail(
      ["mounts", "/x", "base-c"],
      "failed to get active mount: requested snapshot default/2/base-c not active or view: failed precondition",
    );
    await fail(["info", "nope"], "snapshot nope does not exist: not found");
  });

  it("uses the native snapshotter and namespaces", async () => {
    const nroot = join(dir, "io.containerd.snapshotter.v1.native", "snapshots");
    assert.equal(
      await ctrSnap(["--snapshotter", "native", "prepare", "-t", "/m", "nat1"], "other"),
      `mount -t bind ${nroot}/1 /m -o rbind,rw\n`,
    );
    await ctrSnap(["--snapshotter", "native", "commit", "nat1c", "nat1"], "other");
    assert.equal(
      await berthSnap(["--snapshotter", "native", "view", "-t", "/m", "natv", "nat1c"], "other"),
      `mount -t bind ${nroot}/1 /m -o rbind,ro\n`,
    );
    assert.equal(await ctrSnap(["ls"], "other"), "KEY PARENT KIND \n");
    assert.equal(
      await ctrSnap(["--snapshotter", "native", "ls"], "other"),
      await berthSnap(["--snapshotter", "native", "ls"], "other"),
    );
    await berthSnap(["--snapshotter", "native", "rm", "natv", "nat1c"], "other");
    assert.equal(await ctrSnap(["--snapshotter", "native", "ls"], "other"), "KEY PARENT KIND \n");
    // berth's prepare --mounts prints Go's JSON of the mounts
    const json = JSON.parse(
      await berthSnap(["--snapshotter", "native", "prepare", "--mounts", "j"], "other"),
    );
    assert.deepEqual(json, [{ Type: "bind", Source: `${nroot}/3`, Options: ["rbind", "rw"] }]);
  });

  it("formats sizes and trees like ctr", () => {
    assert.equal(humanBytes(0), "0.0 B");
    assert.equal(humanBytes(4096), "4.0 KiB");
    assert.equal(humanBytes(1536 * 1024), "1.5 MiB");
    assert.equal(
      formatTree([
        { name: "c", parent: "b" },
        { name: "b", parent: "" },
      ]),
      " b\n  \\_ c\n",
    );
  });
});
