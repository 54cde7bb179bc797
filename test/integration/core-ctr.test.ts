// Issue "berthd core": the real ctr (Debian's containerd 1.6 client) drives berthd.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ctr, ok } from "../helpers/ctr.js";
import { type Daemon, GC_OFF_CONFIG, startBerthd } from "../helpers/daemons.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

async function sha256File(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return `sha256:${h.digest("hex")}`;
}

describe("berthd driven by the real ctr", () => {
  let d: Daemon;
  let tmp: string;
  before(async () => {
    tmp = await makeTempDir("core-ctr");
    // Content ingested by ctr is referenced by nothing: keep GC from collecting it mid-test.
    d = await startBerthd({ config: `version = 2\n${GC_OFF_CONFIG}` });
  });
  after(async () => {
    await d?.cleanup();
    await removeTempDir(tmp);
  });

  it("ctr version shows berthd's version and a UUID", async () => {
    const out = ok(await ctr(d.address, ["version"]), "ctr version");
    assert.match(out, /Server:\s+Version:\s+v\d+\.\d+\.\d+\s+Revision:\s+berth\s+UUID:\s+[0-9a-f-]{36}/);
  });

  it("ctr plugins ls lists berth's plugins with containerd's types and a status", async () => {
    const out = ok(await ctr(d.address, ["plugins", "ls"]), "ctr plugins ls");
    assert.match(out, /^TYPE\s+ID\s+PLATFORMS\s+STATUS/);
    for (const [type, id] of [
      ["io.containerd.content.v1", "content"],
      ["io.containerd.metadata.v1", "bolt"],
      ["io.containerd.event.v1", "exchange"],
      ["io.containerd.lease.v1", "manager"],
      ["io.containerd.grpc.v1", "namespaces"],
      ["io.containerd.grpc.v1", "content"],
      ["io.containerd.grpc.v1", "introspection"],
    ])
      assert.match(
        out,
        new RegExp(`^${type.replace(/\./g, "\\.")}\\s+${id}\\s+\\S+\\s+ok`, "m"),
        `${type} ${id} ok`,
      );
    const filtered = ok(await ctr(d.address, ["plugins", "ls", "type==io.containerd.grpc.v1"]));
    assert.doesNotMatch(filtered, /io\.containerd\.metadata\.v1/);
    assert.match(filtered, /io\.containerd\.grpc\.v1\s+leases/);
  });

  it("namespaces: create, ls, label, refuse to remove a non-empty one, rm", async () => {
    ok(await ctr(d.address, ["ns", "create", "team-a", "owner=ops"]));
    let out = ok(await ctr(d.address, ["ns", "ls"]));
    assert.match(out, /^team-a\s+owner=ops\s*$/m);
    ok(await ctr(d.address, ["ns", "label", "team-a", "tier=gold"]));
    ok(await ctr(d.address, ["ns", "label", "team-a", "owner="]));
    out = ok(await ctr(d.address, ["ns", "ls"]));
    assert.match(out, /^team-a\s+tier=gold\s*$/m);
    const dup = await ctr(d.address, ["ns", "create", "team-a"]);
    assert.notEqual(dup.code, 0);
    assert.match(dup.stderr, /already exists/);

    // a namespace holding content cannot be removed
    const blob = join(tmp, "small");
    writeFileSync(blob, "hello berth\n");
    ok(
      await ctr(d.address, ["-n", "team-a", "content", "ingest", "--expected-size", "12", "small-ref"], {
        input: { file: blob },
      }),
    );
    const rm = await ctr(d.address, ["ns", "rm", "team-a"]);
    assert.notEqual(rm.code, 0);
    assert.match(rm.stderr, /namespace "team-a" must be empty, but it still has blobs: failed precondition/);
    const digest = await sha256File(blob);
    ok(await ctr(d.address, ["-n", "team-a", "content", "rm", digest]));
    ok(await ctr(d.address, ["ns", "rm", "team-a"]));
    out = ok(await ctr(d.address, ["ns", "ls", "-q"]));
    assert.doesNotMatch(out, /team-a/);
  });

  it("content: ingest 50 MiB, ls shows it, get returns it byte for byte, rm", async () => {
    const file = join(tmp, "big");
    writeFileSync(file, randomBytes(50 << 20));
    const digest = await sha256File(file);
    ok(
      await ctr(
        d.address,
        [
          "content",
          "ingest",
          "--expected-size",
          String(statSync(file).size),
          "--expected-digest",
          digest,
          "big-ref",
        ],
        { input: { file } },
      ),
      "ingest",
    );
    const ls = ok(await ctr(d.address, ["content", "ls"]));
    assert.match(ls, new RegExp(`^${digest}\\s+52\\.43MB\\s`, "m"));
    const out = join(tmp, "big.out");
    const got = await ctr(d.address, ["content", "get", digest], { output: { file: out } });
    assert.equal(got.code, 0, got.stderr);
    assert.equal(await sha256File(out), digest);
    ok(await ctr(d.address, ["content", "rm", digest]));
    const after = ok(await ctr(d.address, ["content", "ls", "-q"]));
    assert.doesNotMatch(after, new RegExp(digest));
  });

  it("content: a wrong expected digest is refused and nothing is committed", async () => {
    const file = join(tmp, "wrong");
    writeFileSync(file, "some bytes");
    const fake = `sha256:${"0".repeat(64)}`;
    const r = await ctr(d.address, ["content", "ingest", "--expected-digest", fake, "wrong-ref"], {
      input: { file },
    });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /unexpected commit digest/);
    const ls = ok(await ctr(d.address, ["content", "ls", "-q"]));
    assert.doesNotMatch(ls, new RegExp(await sha256File(file)));
  });

  it("leases: create, ls, rm", async () => {
    const id = ok(await ctr(d.address, ["leases", "create", "--id", "lease-1", "purpose=test"])).trim();
    assert.equal(id, "lease-1");
    const gen = ok(await ctr(d.address, ["leases", "create"])).trim();
    assert.match(gen, /^\d+-[A-Za-z0-9_-]{4}$/, "server-generated id like containerd's");
    const ls = ok(await ctr(d.address, ["leases", "ls"]));
    assert.match(ls, /^lease-1\s+\S+\s+.*purpose=test/m);
    assert.match(ls, /containerd\.io\/gc\.expire=/);
    ok(await ctr(d.address, ["leases", "rm", "lease-1", gen]));
    const after = ok(await ctr(d.address, ["leases", "ls", "-q"]));
    assert.equal(after.trim(), "");
    const missing = await ctr(d.address, ["leases", "rm", "nope"]);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /not found/);
  });

  it("events: ctr events receives namespace events", async () => {
    const child: ChildProcess = spawn("/usr/bin/ctr", ["--address", d.address, "events"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout!.on("data", (c: Buffer) => {
      out += c.toString();
    });
    try {
      // the subscription is live once a probe event arrives
      for (let i = 0; i < 50 && !out.includes("probe-"); i++) {
        ok(await ctr(d.address, ["ns", "create", `probe-${i}`]));
        await new Promise((r) => setTimeout(r, 100));
      }
      ok(await ctr(d.address, ["ns", "create", "evt-ns", "k=v"]));
      ok(await ctr(d.address, ["ns", "rm", "evt-ns"]));
      for (let i = 0; i < 50 && !out.includes("/namespaces/delete"); i++)
        await new Promise((r) => setTimeout(r, 100));
    } finally {
      child.kill("SIGTERM");
    }
    assert.match(out, /default \/namespaces\/create \{"name":"evt-ns","labels":\{"k":"v"\}\}/);
    assert.match(out, /default \/namespaces\/delete \{"name":"evt-ns"\}/);
  });

  it("bad input: unknown namespace header, bad filter", async () => {
    const badNs = await ctr(d.address, ["-n", "no/such", "leases", "ls"]);
    assert.notEqual(badNs.code, 0);
    assert.match(badNs.stderr, /namespace validation: identifier "no\/such" must match/);
    const badFilter = await ctr(d.address, ["leases", "ls", "id=="]);
    assert.notEqual(badFilter.code, 0);
    assert.match(
      badFilter.stderr,
      /filters: parse error: \[id==\]: expected value or quoted: invalid argument/,
    );
    const badFilter2 = await ctr(d.address, ["content", "ls", "labels.==x"]);
    assert.notEqual(badFilter2.code, 0);
    assert.match(badFilter2.stderr, /parse error/);
  });
});
