// The berth CLI against the real containerd, side by side with the real ctr: the same commands
// must give the same output and exit status (modulo ages, timestamps and generated ids).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { berth, CTR_BIN, ctr, ok, type RunOptions, type RunResult } from "../helpers/ctr.js";
import { CONTAINERD_BIN, type Daemon, GC_OFF_CONFIG, repoRoot, startContainerd } from "../helpers/daemons.js";

const D = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"; // "hello\n"
const D7 = "sha256:c6db240428e67e2525f7ad3eb1706fc5b8c3065d9a51f41aaf0c3690aa69a5b6"; // "hello\nX"
const Z = `sha256:${"0".repeat(64)}`;
const haveTools = existsSync(CONTAINERD_BIN) && existsSync(CTR_BIN);

/** Ages and times vary between two runs; whitespace runs then vary with them. */
const loose = (s: string) =>
  s
    .replace(/Less than a second|\d+ seconds?|About a minute/g, "AGE")
    .replace(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)/g, "TIME")
    .replace(/[ \t]+/g, " ");

describe("berth CLI vs ctr on the real containerd", {
  skip: !haveTools && "containerd/ctr not installed",
}, () => {
  let d: Daemon;
  before(async () => {
    d = await startContainerd({ config: GC_OFF_CONFIG });
  });
  after(async () => {
    await d?.cleanup();
  });

  /** Runs the same command with both clients, each in its own namespace when `ns` is given. */
  async function both(
    args: string[],
    opts: RunOptions & { ns?: string } = {},
  ): Promise<[RunResult, RunResult]> {
    const c = await ctr(d.address, args, { ...opts, namespace: opts.ns && `${opts.ns}-c` });
    const b = await berth(d.address, args, { ...opts, namespace: opts.ns && `${opts.ns}-b` });
    return [c, b];
  }

  async function same(
    args: string[],
    opts: RunOptions & { ns?: string; exact?: boolean; unordered?: boolean } = {},
  ): Promise<string> {
    const [c, b] = await both(args, opts);
    const norm = (s: string) => {
      const t = opts.ns ? s.replaceAll(`${opts.ns}-c`, "NS").replaceAll(`${opts.ns}-b`, "NS") : s;
      const u = opts.exact ? t : loose(t);
      return opts.unordered ? u.split("\n").sort().join("\n") : u;
    };
    assert.equal(b.code, c.code, `exit status of ${args.join(" ")}: ctr ${c.stderr} / berth ${b.stderr}`);
    assert.equal(norm(b.stdout), norm(c.stdout), `stdout of ${args.join(" ")}`);
    if (c.code !== 0) {
      assert.match(b.stderr, /^berth: /, `berth reports errors with its prefix: ${b.stderr}`);
    }
    return b.stdout;
  }

  it("namespaces: create, list, label, remove", async () => {
    // Namespaces are global: run the whole sequence with ctr, then with berth (it ends clean).
    const steps = [
      ["ns", "create", "nsa", "a=b", "c", "x=y=z"],
      ["ns", "create", "nsa"], // already exists
      ["ns", "label", "nsa", "a=", "e=f"],
      ["ns", "ls"],
      ["ns", "ls", "-q"],
      ["ns", "rm", "nsa", "nosuch"],
      ["ns", "ls", "-q"],
    ];
    const results = async (client: typeof ctr) => {
      const out: [number | null, string][] = [];
      for (const args of steps) {
        const r = await client(d.address, args);
        out.push([r.code, r.stdout]);
      }
      return out;
    };
    const c = await results(ctr);
    const b = await results(berth);
    assert.deepEqual(b, c);
    assert.match(b[3]![1], /^nsa +c=true,e=f,x=y=z $/m);
  });

  it("content: ingest, list, get, label, active, delete", async () => {
    const ns = "ct";
    const hello = { input: "hello\n", ns };
    await same(["content", "ingest", "--expected-size", "6", "--expected-digest", D, "r0"], hello);
    await same(["content", "ingest", "--expected-size", "6", "--expected-digest", D, "r0"], hello); // exists
    await same(["content", "ingest", "--expected-size", "7", "r1"], hello); // short input
    await same(["content", "ingest", "--expected-size", "6", "--expected-digest", Z, "r2"], hello); // bad digest
    await same(["content", "ingest", "--expected-size", "3", "r3"], hello); // bad size
    await same(["content", "ingest", "--expected-digest", "bad", "r4"], hello);
    await same(["content", "active"], { ns, unordered: true }); // the daemon lists ingests unordered
    await same(["content", "ls"], { ns });
    await same(["content", "ls", "-q"], { ns, exact: true });
    assert.equal(await same(["content", "get", D], { ns, exact: true }), "hello\n");
    await same(["content", "get", Z], { ns, exact: true });
    await same(["content", "get", "sha256:abc"], { ns, exact: true });
    await same(["content", "label", D, "k=v=w"], { ns, exact: true });
    await same(["content", "label", D, "k=", "x=1"], { ns, exact: true });
    await same(["content", "label", D], { ns, exact: true });
    await same(["content", "label", Z, "a=b"], { ns, exact: true });
    await same(["content", "ls", "labels.x==1"], { ns });
    await same(["content", "rm", D, D, "bad"], { ns, exact: true });
  });

  it("content ingest resumes a partial ingest from stdin", async () => {
    const ns = "resume";
    const b = (args: string[], input?: string) => berth(d.address, args, { namespace: ns, input });
    const short = await b(["content", "ingest", "--expected-size", "7", "r"], "hello\n");
    assert.equal(short.code, 1);
    assert.match(ok(await b(["content", "active", "-q"])), /^r$/m);
    // Unlike ctr, which needs a seekable stdin for this, berth reads past what is already there.
    ok(await b(["content", "ingest", "--expected-size", "7", "r"], "hello\nX"), "resume");
    assert.equal(ok(await b(["content", "ls", "-q"])), `${D7}\n`);
    assert.equal(ok(await b(["content", "active", "-q"])), "");
  });

  it("leases: create, list, delete", async () => {
    const ns = "ls";
    await same(["leases", "create", "--id", "L1", "-x", "0", "a=b", "c"], { ns, exact: true });
    await same(["leases", "create", "--id", "L2", "-x", "1h30m", "x=y"], { ns, exact: true });
    await same(["leases", "create", "--id", "L1"], { ns, exact: true }); // exists
    await same(["leases", "ls"], { ns });
    await same(["leases", "ls", "-q"], { ns, exact: true });
    await same(["leases", "ls", "id==L1"], { ns });
    await same(["leases", "rm", "L1", "nosuch", "L2"], { ns, exact: true }); // stops at nosuch
    await same(["leases", "ls", "-q"], { ns, exact: true });
    const gen = ok(await berth(d.address, ["leases", "create"], { namespace: ns }));
    assert.match(gen, /^\d+-[A-Za-z0-9_-]{4}\n$/);
  });

  it("plugins and version", async () => {
    await same(["plugins", "ls"], { exact: true });
    await same(["plugins", "ls", "-q"], { exact: true });
    await same(["plugins", "ls", "type==io.containerd.snapshotter.v1"], { exact: true });
    // ctr prints exports in Go's random map order; compare the lines as sets.
    const [c, b] = await both(["plugins", "ls", "-d"]);
    assert.deepEqual(b.stdout.split("\n").sort(), c.stdout.split("\n").sort());
    const [cv, bv] = await both(["version"]);
    assert.equal(bv.stdout.split("Server:")[1], cv.stdout.split("Server:")[1]);
  });

  it("events: same lines for the same happenings", async () => {
    const start = (cmd: string, args: string[]) => {
      const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      p.stdout.on("data", (c: Buffer) => {
        out += c.toString();
      });
      return { p, out: () => out };
    };
    const c = start(CTR_BIN, ["-a", d.address, "events"]);
    const b = start(process.execPath, [path.join(repoRoot, "bin/berth.js"), "-a", d.address, "events"]);
    await sleep(1000);
    ok(await ctr(d.address, ["ns", "create", "evns", "x=1<2&", "y=2"]));
    ok(await ctr(d.address, ["ns", "label", "evns", "x="]));
    ok(await ctr(d.address, ["ns", "rm", "evns"]));
    await sleep(500);
    c.p.kill("SIGTERM");
    b.p.kill("SIGTERM");
    assert.equal(b.out(), c.out());
    assert.equal(b.out().split("\n").length, 4);
  });
});

describe("berth CLI without a daemon", () => {
  it("names the address when it cannot connect", async () => {
    const r = await berth("/tmp/berth-test-no-such-dir/none.sock", ["ns", "ls"]);
    assert.equal(r.code, 1);
    assert.equal(
      r.stderr,
      'berth: cannot connect to "/tmp/berth-test-no-such-dir/none.sock": no such socket (is the daemon running?)\n',
    );
  });
});
