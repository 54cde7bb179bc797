// bench/null-server.ts, the floor of core.js's small-call rows: it must answer the benchmark's
// three calls with what berthd answers (so that both are timed on answers of the same size), and
// nothing else.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { isKind } from "../../src/base/errdefs.js";
import { Namespaces } from "../../src/gen/containerd/services/namespaces/v1/namespace_pb.js";
import { Version } from "../../src/gen/containerd/services/version/v1/version_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const script = fileURLToPath(new URL("../../bench/null-server.js", import.meta.url));

describe("bench null server", () => {
  let dir: string;
  let child: ChildProcess;
  let conn: Connection;
  before(async () => {
    dir = await makeTempDir("null-server");
    const address = join(dir, "null.sock");
    child = spawn(process.execPath, [script, address], { stdio: ["ignore", "pipe", "inherit"] });
    await new Promise<void>((resolve, reject) => {
      child.stdout!.once("data", () => resolve());
      child.once("exit", (code) => reject(new Error(`null server exited with ${code}`)));
    });
    conn = new Connection(address);
  });
  after(async () => {
    conn?.close();
    if (child && child.exitCode === null) {
      const gone = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await gone;
    }
    await removeTempDir(dir);
  });

  it("answers List, Get and Version as berthd does for core.js's namespace", async () => {
    const ns = conn.client(Namespaces);
    const list = await ns.list({});
    assert.deepEqual(
      list.namespaces.map((n) => [n.name, n.labels]),
      [["bench", { purpose: "bench" }]],
    );
    const got = await ns.get({ name: "bench" });
    assert.equal(got.namespace?.name, "bench");
    assert.deepEqual(got.namespace?.labels, { purpose: "bench" });
    const v = await conn.client(Version).version({});
    assert.equal(v.version, "null");
  });

  it("refuses every other call as not implemented", async () => {
    await assert.rejects(conn.client(Namespaces).create({ namespace: { name: "x", labels: {} } }), (err) =>
      isKind(err, "not implemented"),
    );
  });
});
