// Smoke test of the shared test helpers against the real containerd: start it on temp dirs, drive it
// with the real ctr, stop it, and check that nothing is left behind.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { ctr, ok } from "../helpers/ctr.js";
import { type Daemon, GC_OFF_CONFIG, startContainerd } from "../helpers/daemons.js";
import { makeTempDir, mountsUnder, removeTempDir } from "../helpers/tmp.js";

describe("test harness: real containerd", () => {
  let d: Daemon;

  before(async () => {
    // Also checks that `config` text reaches containerd: with GC off, ingested content stays.
    d = await startContainerd({ config: GC_OFF_CONFIG });
  });

  after(async () => {
    await d?.cleanup();
  });

  it("answers ctr version with client and server versions", async () => {
    const out = ok(await ctr(d.address, ["version"]), "ctr version");
    assert.match(out, /Client:[\s\S]*Version:/);
    assert.match(out, /Server:[\s\S]*Version:/);
    assert.equal(d.running(), true);
  });

  // Content ingested by ctr has no lease: without GC_OFF_CONFIG containerd would collect it.
  it("ingests content from a stream and reads it back", async () => {
    const data = Buffer.from("hello from the berth harness\n");
    const { createHash } = await import("node:crypto");
    const dgst = "sha256:" + createHash("sha256").update(data).digest("hex");
    ok(
      await ctr(
        d.address,
        [
          "content",
          "ingest",
          "--expected-digest",
          dgst,
          "--expected-size",
          String(data.length),
          "harness-ref",
        ],
        {
          input: data,
        },
      ),
      "ctr content ingest",
    );
    const got = ok(await ctr(d.address, ["content", "get", dgst]), "ctr content get");
    assert.equal(got, data.toString());
  });

  it("lists, creates and removes namespaces with ctr", async () => {
    ok(await ctr(d.address, ["namespaces", "create", "harness", "a=b"]), "ctr ns create");
    const out = ok(await ctr(d.address, ["ns", "ls"]), "ctr ns ls");
    assert.match(out, /^NAME\s+LABELS/);
    assert.match(out, /^harness\s+a=b\s*$/m);
    ok(await ctr(d.address, ["ns", "rm", "harness"]), "ctr ns rm");
    assert.doesNotMatch(ok(await ctr(d.address, ["ns", "ls", "-q"])), /harness/);
  });

  it("reports a failing ctr command with its exit code and stderr", async () => {
    const r = await ctr(d.address, ["content", "get", "sha256:" + "0".repeat(64)]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /not found/);
  });

  it("stops on SIGTERM and cleans up its temp dir", async () => {
    const other = await startContainerd();
    assert.notEqual(other.address, d.address);
    const e = await other.stop();
    assert.equal(other.running(), false);
    assert.ok(e.code === 0 || e.signal === "SIGTERM", `exit ${JSON.stringify(e)}`);
    await other.cleanup();
    assert.equal(existsSync(other.dir), false);
  });

  it("kill9 kills it, and it restarts on the same root", async () => {
    const keep = await makeTempDir("harness-root");
    try {
      const first = await startContainerd({ root: `${keep}/root`, state: `${keep}/state` });
      ok(await ctr(first.address, ["ns", "create", "survivor"]));
      const e = await first.kill9();
      assert.equal(e.signal, "SIGKILL");
      await first.cleanup();
      const second = await startContainerd({ root: `${keep}/root`, state: `${keep}/state` });
      try {
        assert.match(ok(await ctr(second.address, ["ns", "ls", "-q"])), /^survivor$/m);
      } finally {
        await second.cleanup();
      }
    } finally {
      await removeTempDir(keep);
    }
  });

  it("a daemon that cannot start fails with its output in the error", async () => {
    await assert.rejects(
      startContainerd({ config: "this is = = not toml", timeoutMs: 10_000 }),
      (err: Error) =>
        /containerd did not become ready[\s\S]*exited early[\s\S]*--- containerd output ---/.test(
          err.message,
        ),
    );
  });

  it("temp dirs with mounts under them are unmounted before removal", async () => {
    const dir = await makeTempDir("harness-mount");
    const { execFileSync } = await import("node:child_process");
    const { mkdirSync } = await import("node:fs");
    mkdirSync(`${dir}/m/inner`, { recursive: true });
    execFileSync("mount", ["-t", "tmpfs", "tmpfs", `${dir}/m`]);
    mkdirSync(`${dir}/m/inner`);
    execFileSync("mount", ["-t", "tmpfs", "tmpfs", `${dir}/m/inner`]);
    assert.equal(mountsUnder(dir).length, 2);
    await removeTempDir(dir);
    assert.equal(mountsUnder(dir).length, 0);
    assert.equal(existsSync(dir), false);
  });
});
