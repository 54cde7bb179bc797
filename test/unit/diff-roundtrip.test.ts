// Diff then apply: a tree A is changed into B; the diff of (A, B) applied onto another copy of A
// gives B again — by the double walk, and by reading an overlay upperdir directly. Then the walking
// differ end to end over the content store (gzip, zstd, verification, errors), its plugins, and
// the Diff gRPC service in process.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  chownSync,
  linkSync,
  mkdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { BerthError } from "../../src/base/errdefs.js";
import { nopLogger } from "../../src/base/log.js";
import { PluginSet } from "../../src/base/plugin.js";
import { PluginType, ServiceId } from "../../src/base/plugin-types.js";
import { applyTar } from "../../src/core/diff/apply.js";
import { decompress, MediaType } from "../../src/core/diff/compression.js";
import { writeDiff } from "../../src/core/diff/diff.js";
import type { DiffService } from "../../src/core/diff/service.js";
import { UNCOMPRESSED_LABEL, type WalkingDiffer } from "../../src/core/diff/walking.js";
import { Diff } from "../../src/gen/containerd/services/diff/v1/diff_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { H2GrpcServer } from "../../src/grpc/h2server.js";
import { contentPlugin } from "../../src/plugins/content.js";
import { corePlugins, type Metadata } from "../../src/plugins/core.js";
import { differPlugin, diffGrpcPlugin, diffServicePlugin } from "../../src/plugins/diff.js";
import type { GrpcServicePlugin } from "../../src/plugins/grpc.js";
import { makedev, mknod, S_IFCHR, S_IFIFO } from "../../src/sys/mknod.js";
import { lsetxattr } from "../../src/sys/xattr.js";
import { buildTar, chunks, type TarEntry } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir, unmountAll } from "../helpers/tmp.js";
import { describeTree } from "../helpers/tree.js";

let base: string;
let seq = 0;
const fresh = (name = "d") => {
  const d = join(base, `${name}-${seq++}`);
  mkdirSync(d);
  return d;
};

const layerA: TarEntry[] = [
  { name: "etc/", type: "dir" },
  { name: "etc/passwd", data: "root:x:0:0\n" },
  { name: "etc/same-size", data: "aaaa" },
  { name: "etc/shadow", data: "s", mode: 0o600 },
  { name: "etc/motd", data: "hello" },
  { name: "usr/", type: "dir" },
  { name: "usr/bin/", type: "dir" },
  { name: "usr/bin/ping", data: "ping", mode: 0o755 },
  { name: "usr/lib/", type: "dir" },
  { name: "usr/lib/a", data: "a" },
  { name: "usr/lib/b/", type: "dir" },
  { name: "usr/lib/b/c", data: "c" },
  { name: "var/", type: "dir" },
  { name: "var/log/", type: "dir" },
  { name: "var/log/messages", data: "m" },
  { name: "var/cache/", type: "dir" },
  { name: "var/cache/x/", type: "dir" },
  { name: "var/cache/x/y", data: "y" },
  { name: "opt/", type: "dir" },
  { name: "opt/dir/", type: "dir" },
  { name: "opt/dir/inner", data: "i" },
  { name: "keep/", type: "dir" },
  { name: "keep/linked", data: "L" },
  { name: "keep/linked2", type: "link", linkname: "keep/linked" },
];
const tarA = buildTar(layerA, {});

async function treeA(): Promise<string> {
  const d = fresh("a");
  await applyTar(d, chunks(tarA), {});
  return d;
}

/** The changes a container might make, done through the file system at `root`. */
function change(root: string): void {
  const p = (s: string) => join(root, s);
  mkdirSync(p("new"));
  writeFileSync(p("new/file"), "new file");
  writeFileSync(p("etc/passwd"), "root:x:0:0\nuser:x:1000:1000\n");
  // same size, same whole second, different content: only a content comparison sees it
  writeFileSync(p("etc/same-size"), "bbbb");
  utimesSync(p("etc/same-size"), 1600000000, 1600000000);
  chmodSync(p("usr/bin/ping"), 0o4711);
  chownSync(p("etc/shadow"), 1, 42);
  unlinkSync(p("var/log/messages"));
  rmSync(p("var/cache"), { recursive: true });
  unlinkSync(p("etc/motd"));
  mkdirSync(p("etc/motd"));
  writeFileSync(p("etc/motd/x"), "x");
  rmSync(p("opt/dir"), { recursive: true });
  writeFileSync(p("opt/dir"), "now a file");
  linkSync(p("usr/bin/ping"), p("usr/bin/ping2"));
  symlinkSync("etc/passwd", p("lnk"));
  writeFileSync(p("new/capped"), "cap");
  lsetxattr(
    p("new/capped"),
    "security.capability",
    Buffer.from("0100000200200000000000000000000000000000", "hex"),
  );
  mknod(p("new/fifo"), S_IFIFO | 0o600);
  mknod(p("new/zero"), S_IFCHR | 0o666, makedev(1, 5));
  rmSync(p("usr/lib"), { recursive: true });
  mkdirSync(p("usr/lib"));
  writeFileSync(p("usr/lib/only"), "only");
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(c);
  return Buffer.concat(parts);
}

function mountOverlay(lower: string): { upper: string; merged: string; work: string } {
  const upper = fresh("upper");
  const work = fresh("work");
  const merged = fresh("merged");
  execFileSync("mount", [
    "-t",
    "overlay",
    "overlay",
    "-o",
    `lowerdir=${lower},upperdir=${upper},workdir=${work}`,
    merged,
  ]);
  return { upper, merged, work };
}

const TREE = { noDirTimes: true, skipXattrs: ["trusted."] };

before(async () => {
  base = await makeTempDir("diff-roundtrip");
});
after(async () => {
  unmountAll(base);
  await removeTempDir(base);
});

describe("diff then apply", () => {
  it("double walk: apply(diff(A, B)) onto A gives B", async () => {
    const a = await treeA();
    const b = await treeA();
    change(b);
    const layer = await collect(writeDiff(a, b));
    const c = await treeA();
    await applyTar(c, chunks(layer, 5000), {});
    assert.deepEqual(describeTree(c, TREE), describeTree(b, TREE));
    // an unchanged tree gives an empty layer
    const empty = await collect(writeDiff(a, await treeA()));
    assert.equal(empty.length, 1024);
  });

  it("overlay upperdir: apply(diff) onto A gives the merged view, and equals the double walk", async () => {
    const a = await treeA();
    const { upper, merged } = mountOverlay(a);
    try {
      change(merged);
      const fromUpper = await collect(writeDiff(a, upper, { overlayUpper: true }));
      const c = await treeA();
      await applyTar(c, chunks(fromUpper), {});
      assert.deepEqual(describeTree(c, TREE), describeTree(merged, TREE));
      // the upper dir held an opaque directory (usr/lib) and whiteouts: they came out in OCI form
      const names: string[] = [];
      const { TarParser } = await import("../../src/core/diff/tar.js");
      const parser = new TarParser({ entry: (h) => names.push(h.name), data() {}, end() {} });
      parser.push(fromUpper);
      assert.ok(names.includes("usr/lib/.wh..wh..opq"), names.join(" "));
      assert.ok(names.includes("var/log/.wh.messages"), names.join(" "));
      assert.ok(names.includes("var/.wh.cache"), names.join(" "));
      const walked = await collect(writeDiff(a, merged));
      const d = await treeA();
      await applyTar(d, chunks(walked), {});
      assert.deepEqual(describeTree(d, TREE), describeTree(c, TREE));
    } finally {
      execFileSync("umount", [merged]);
    }
  });

  it("clamps times to the source date epoch and stamps whiteouts at 0", async () => {
    const a = await treeA();
    const b = await treeA();
    change(b);
    const layer = await collect(writeDiff(a, b, { sourceDateEpoch: new Date(1_000_000_000_000) }));
    const { TarParser } = await import("../../src/core/diff/tar.js");
    const times: number[] = [];
    new TarParser({ entry: (h) => times.push(h.mtime), data() {}, end() {} }).push(layer);
    assert.ok(times.length > 5);
    assert.ok(
      times.every((t) => t <= 1_000_000_000),
      times.join(","),
    );
    assert.ok(times.includes(0));
  });
});

describe("walking differ and diff service", () => {
  let plugins: PluginSet;
  let md: Metadata;
  let differ: WalkingDiffer;
  let svc: DiffService;
  const ns = "default";

  before(async () => {
    const root = fresh("daemon-root");
    plugins = new PluginSet();
    await plugins.init([contentPlugin, ...corePlugins, differPlugin, diffServicePlugin, diffGrpcPlugin], {
      daemon: {
        root,
        state: fresh("daemon-state"),
        address: "",
        ttrpcAddress: "",
        version: "test",
        revision: "",
      },
      disabled: [],
      required: [],
      configFor: (p) => p.defaults?.() ?? {},
      log: nopLogger,
    });
    for (const l of plugins.loaded)
      assert.equal(l.status.state, "ok", `${l.plugin.type}.${l.plugin.id}: ${JSON.stringify(l.status)}`);
    md = plugins.instance<Metadata>(PluginType.Metadata, "bolt");
    differ = plugins.instance<WalkingDiffer>(PluginType.Diff, "walking");
    svc = plugins.instance<DiffService>(PluginType.Service, ServiceId.Diff);
  });
  after(async () => {
    await plugins.close();
  });

  for (const mediaType of [MediaType.OciLayerGzip, MediaType.OciLayerZstd, MediaType.OciLayer]) {
    it(`compare writes a ${mediaType.split(".").pop()} layer with the uncompressed label; apply restores it`, async () => {
      const a = await treeA();
      const b = await treeA();
      change(b);
      const desc = await svc.compare(
        ns,
        [{ type: "bind", source: a, options: ["rbind", "ro"] }],
        [{ type: "bind", source: b, options: ["rbind"] }],
        {
          mediaType,
          labels: { extra: "1" },
        },
      );
      assert.equal(desc.mediaType, mediaType);
      const info = md.content.info(ns, desc.digest);
      assert.equal(info.size, desc.size);
      assert.equal(info.labels.extra, "1");
      const diffId = info.labels[UNCOMPRESSED_LABEL]!;
      const ra = await md.content.readerAt(ns, desc.digest);
      const raw = await collect(ra.stream(0, ra.size));
      await ra.close();
      const tar = await collect(decompress(chunks(raw), mediaType === MediaType.OciLayer ? "" : "unknown"));
      assert.equal(diffId, `sha256:${createHash("sha256").update(tar).digest("hex")}`);

      // onto a bind mount (applied in place, plain mode)
      const c = await treeA();
      const applied = await svc.apply(ns, desc, [{ type: "bind", source: c, options: ["rbind", "rw"] }]);
      assert.deepEqual(applied, { mediaType: MediaType.OciLayer, digest: diffId, size: tar.length });
      assert.deepEqual(describeTree(c, TREE), describeTree(b, TREE));

      // onto an overlay snapshot's mounts (applied into the upperdir, overlay mode)
      const lower = await treeA();
      const upper = fresh("upper");
      const work = fresh("work");
      await differ.apply(
        ns,
        desc,
        [
          {
            type: "overlay",
            source: "overlay",
            options: [`workdir=${work}`, `upperdir=${upper}`, `lowerdir=${lower}`],
          },
        ],
        {
          syncFs: true,
        },
      );
      const merged = fresh("merged");
      execFileSync("mount", [
        "-t",
        "overlay",
        "overlay",
        "-o",
        `lowerdir=${lower},upperdir=${upper},workdir=${work}`,
        merged,
      ]);
      try {
        assert.deepEqual(describeTree(merged, TREE), describeTree(b, TREE));
        // and the overlay shortcut of compare gives the same layer content
        const again = await differ.compare(
          ns,
          [{ type: "bind", source: lower, options: ["rbind", "ro"] }],
          [
            {
              type: "overlay",
              source: "overlay",
              options: [`workdir=${work}`, `upperdir=${upper}`, `lowerdir=${lower}`],
            },
          ],
          { mediaType },
        );
        const d = await treeA();
        await differ.apply(ns, again, [{ type: "bind", source: d, options: ["rbind"] }]);
        assert.deepEqual(describeTree(d, TREE), describeTree(b, TREE));
      } finally {
        execFileSync("umount", [merged]);
      }
    });
  }

  it("diffs a live overlay against another lower by mounting it read-only (upperdir as a lowerdir)", async () => {
    const a = await treeA();
    const { upper, merged, work } = mountOverlay(a);
    try {
      change(merged);
      const desc = await differ.compare(
        ns,
        [],
        [
          {
            type: "overlay",
            source: "overlay",
            options: [`workdir=${work}`, `upperdir=${upper}`, `lowerdir=${a}`],
          },
        ],
      );
      const c = fresh("from-scratch");
      await differ.apply(ns, desc, [{ type: "bind", source: c, options: ["rbind"] }]);
      assert.deepEqual(describeTree(c, TREE), describeTree(merged, TREE));
    } finally {
      execFileSync("umount", [merged]);
    }
  });

  it("applies through a temporary mount when there is no shortcut", async () => {
    const b = await treeA();
    change(b);
    const desc = await differ.compare(ns, [], [{ type: "bind", source: b, options: ["rbind", "ro"] }], {});
    // a tmpfs is mounted, filled and unmounted: the call must still report the layer
    const r = await differ.apply(ns, desc, [{ type: "tmpfs", source: "tmpfs", options: ["size=64m"] }]);
    assert.equal(r.digest, md.content.info(ns, desc.digest).labels[UNCOMPRESSED_LABEL]);
  });

  it("fails clearly on a corrupted blob, unknown media types and missing content", async () => {
    const b = await treeA();
    const desc = await differ.compare(ns, [], [{ type: "bind", source: b, options: ["rbind"] }], {
      mediaType: MediaType.OciLayer,
    });
    const blob = md.content.backend.blobPath(desc.digest);
    chmodSync(blob, 0o644);
    const bytes = readFileSync(blob);
    bytes[bytes.length - 1] ^= 0xff; // in the zero padding: the tar still parses
    writeFileSync(blob, bytes);
    await assert.rejects(
      differ.apply(ns, desc, [{ type: "bind", source: fresh(), options: ["rbind"] }]),
      (err: unknown) =>
        err instanceof BerthError && err.kind === "data loss" && /failed verification/.test(err.message),
    );
    await assert.rejects(
      svc.apply(ns, { ...desc, mediaType: "application/vnd.oci.image.config.v1+json" }, [
        { type: "bind", source: fresh(), options: [] },
      ]),
      /failed to get stream processor for application\/vnd.oci.image.config.v1\+json: no processor for media-type/,
    );
    await assert.rejects(
      svc.compare(ns, [], [{ type: "bind", source: b, options: [] }], { mediaType: "application/x-foo" }),
      (err: unknown) =>
        err instanceof BerthError &&
        err.kind === "not implemented" &&
        err.message === "unsupported diff media type: application/x-foo: not implemented",
    );
    await assert.rejects(
      svc.apply(ns, { ...desc, digest: `sha256:${"0".repeat(64)}` }, [
        { type: "bind", source: fresh(), options: [] },
      ]),
      (err: unknown) =>
        err instanceof BerthError &&
        err.kind === "not found" &&
        /^failed to get reader from content store: /.test(err.message),
    );
  });

  it("serves containerd.services.diff.v1.Diff over gRPC", async () => {
    const server = new H2GrpcServer();
    const reg = plugins.instance<GrpcServicePlugin>(PluginType.GRPC, "diff");
    for (const s of reg.services) server.addService(s.desc, s.impl as never);
    const sock = join(fresh("sock"), "diff.sock");
    await server.listen(sock);
    const conn = new Connection(sock);
    try {
      const client = conn.client(Diff);
      const a = await treeA();
      const b = await treeA();
      change(b);
      const res = await client.diff(
        {
          left: [{ type: "bind", source: a, options: ["rbind", "ro"] }],
          right: [{ type: "bind", source: b, options: ["rbind", "ro"] }],
          labels: { via: "grpc" },
        },
        { namespace: ns },
      );
      assert.equal(res.diff?.mediaType, MediaType.OciLayerGzip);
      const c = await treeA();
      const applied = await client.apply(
        { diff: res.diff, mounts: [{ type: "bind", source: c, options: ["rbind"] }] },
        { namespace: ns },
      );
      assert.equal(applied.applied?.digest, md.content.info(ns, res.diff!.digest).labels[UNCOMPRESSED_LABEL]);
      assert.deepEqual(describeTree(c, TREE), describeTree(b, TREE));
      await assert.rejects(
        client.diff(
          { left: [], right: [{ type: "bind", source: b, options: [] }], mediaType: "application/x-foo" },
          { namespace: ns },
        ),
        (err: unknown) => err instanceof BerthError && err.kind === "not implemented",
      );
      await assert.rejects(client.apply({ diff: res.diff, mounts: [] }, {}), /namespace is required/);
    } finally {
      conn.close();
      server.forceShutdown();
    }
  });
});
