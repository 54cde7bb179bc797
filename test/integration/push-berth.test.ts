// Issue 4: `berth images push` runs in the daemon (Transfer: image store → registry). Round trip:
// pull from registry A into berthd, tag, push to another path on A (blobs mounted) and to registry
// B (blobs uploaded), then pull both back into the real containerd with the real ctr: same digests.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Images } from "../../src/gen/containerd/services/images/v1/images_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { berth, ctr, ok } from "../helpers/ctr.js";
import { type Daemon, startBerthd, startContainerd } from "../helpers/daemons.js";
import { type BuiltImage, buildBusyboxImage, pushImage } from "../helpers/images.js";
import { htpasswdLine, type Registry, startRegistry } from "../helpers/registry.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const REPO = "test/busybox";

/** `ctr content ls` digests, sorted. */
const digests = (out: string) =>
  out
    .trim()
    .split("\n")
    .slice(1)
    .filter((l) => l.trim() !== "")
    .map((l) => l.split(/\s+/)[0]!)
    .sort();

describe("berth images push: daemon-side push through the Transfer service", () => {
  let regA: Registry;
  let regB: Registry;
  let single: BuiltImage;
  let multi: BuiltImage;
  let b: Daemon;
  let c: Daemon;
  let cconn: Connection;

  before(async () => {
    [regA, regB] = await Promise.all([startRegistry(), startRegistry()]);
    single = buildBusyboxImage();
    multi = buildBusyboxImage({
      platforms: [
        { os: "linux", architecture: "amd64" },
        { os: "linux", architecture: "arm64", variant: "v8" },
      ],
    });
    await pushImage(regA.url, REPO, "1", single);
    await pushImage(regA.url, REPO, "multi", multi);
    [b, c] = await Promise.all([startBerthd(), startContainerd()]);
    cconn = new Connection(c.address);
  });

  after(async () => {
    cconn?.close();
    await Promise.all([b?.cleanup(), c?.cleanup()]);
    await Promise.all([regA?.cleanup(), regB?.cleanup()]);
  });

  const target = async (name: string) =>
    (await cconn.client(Images).get({ name }, { namespace: "default" })).image?.target?.digest;

  it("pull, tag, push to another repository and registry; ctr pulls the same digests back", async () => {
    const src = `${regA.host}/${REPO}:1`;
    ok(await berth(b.address, ["images", "pull", "--plain-http", src]), "berth pull");
    const tagged = `${regA.host}/other/busybox:copy`;
    ok(await berth(b.address, ["images", "tag", src, tagged]), "berth tag");
    const out = ok(await berth(b.address, ["images", "push", "--plain-http", tagged]), "berth push (A)");
    assert.match(out, /pushed in/);
    assert.match(out, /mounted|already exists/, "blobs mounted from the source repository");
    const toB = `${regB.host}/copied/busybox:v1`;
    const outB = ok(await berth(b.address, ["images", "push", "--plain-http", toB, src]), "berth push (B)");
    assert.match(outB, /complete/);

    for (const ref of [tagged, toB]) {
      ok(await ctr(c.address, ["images", "pull", "--plain-http", ref]), `ctr pull ${ref}`);
      assert.equal(await target(ref), single.target.digest, ref);
    }
    const [cb, cc] = await Promise.all([b, c].map(async (d) => ok(await ctr(d.address, ["content", "ls"]))));
    assert.deepEqual(digests(cc!), digests(cb!), "content digests");
  });

  it("pushes a whole index pulled with --all-platforms; a partial one only with --platform", async () => {
    const src = `${regA.host}/${REPO}:multi`;
    ok(await berth(b.address, ["images", "pull", "--plain-http", "--all-platforms", src]));
    const dst = `${regB.host}/copied/busybox:multi`;
    ok(await berth(b.address, ["images", "push", "--plain-http", dst, src]), "push index");
    ok(await ctr(c.address, ["images", "pull", "--plain-http", "--all-platforms", dst]), "ctr pull index");
    assert.equal(await target(dst), multi.target.digest);

    // a single-platform pull of the index: pushing it whole fails clearly
    const partial = `${regA.host}/${REPO}:multi`;
    const all = ok(await berth(b.address, ["images", "ls", "-q"]))
      .trim()
      .split("\n");
    ok(await berth(b.address, ["images", "rm", "--sync", ...all]));
    ok(await berth(b.address, ["images", "pull", "--plain-http", "--platform", "linux/arm64", partial]));
    const r = await berth(b.address, ["images", "push", "--plain-http", `${regB.host}/p/busybox:x`, partial]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /missing|not found/);
    const one = `${regB.host}/p/busybox:arm64`;
    ok(await berth(b.address, ["images", "push", "--plain-http", "--platform", "linux/arm64", one, partial]));
    ok(await ctr(c.address, ["images", "pull", "--plain-http", "--platform", "linux/arm64", one]));
    const arm = multi.platforms.find((x) => x.platform.architecture === "arm64")!;
    assert.equal(await target(one), arm.manifest.digest, "the arm64 manifest alone");
  });

  it("a push of an unknown image fails with not found", async () => {
    const r = await berth(b.address, ["images", "push", "--plain-http", `${regB.host}/none/x:1`]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /not found/);
  });

  it("pushes to a registry that asks for credentials with --user (auth stream), never printing them", async () => {
    const dir = await makeTempDir("push-auth");
    const pw = join(dir, "htpasswd");
    writeFileSync(pw, `${htpasswdLine("alice", "s3cret-pw")}\n`);
    const regC = await startRegistry({ htpasswd: pw });
    try {
      const src = `${regA.host}/${REPO}:1`;
      const dst = `${regC.host}/secret/busybox:1`;
      ok(await berth(b.address, ["images", "pull", "--plain-http", src]));
      const denied = await berth(b.address, ["images", "push", "--plain-http", dst, src]);
      assert.notEqual(denied.code, 0);
      const r = ok(
        await berth(b.address, ["images", "push", "--plain-http", "--user", "alice:s3cret-pw", dst, src]),
        "berth push --user",
      );
      assert.ok(!r.includes("s3cret-pw"));
      ok(await ctr(c.address, ["images", "pull", "--plain-http", "--user", "alice:s3cret-pw", dst]));
      assert.equal(await target(dst), single.target.digest);
    } finally {
      await regC.cleanup();
      await removeTempDir(dir);
    }
  });
});
