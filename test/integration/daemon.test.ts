// berthd as a process: config errors, socket permissions, live-daemon refusal, stale sockets,
// oom_score, its malloc and V8 settings, `config default|dump`, and a kill -9 during an ingest.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { parse } from "smol-toml";
import { Content, WriteAction } from "../../src/gen/containerd/services/content/v1/content_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { ctr, ok } from "../helpers/ctr.js";
import { berthdFirstLine, GC_OFF_CONFIG, repoRoot, startBerthd } from "../helpers/daemons.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const BERTHD = join(repoRoot, "bin/berthd.js");

function berthdSync(args: string[], timeout = 20_000) {
  return spawnSync(process.execPath, [BERTHD, ...args], { encoding: "utf8", timeout });
}

describe("berthd process", () => {
  let tmp: string;
  before(async () => {
    tmp = await makeTempDir("daemon");
  });
  after(async () => {
    await removeTempDir(tmp);
  });

  const dirs = (name: string) => [
    "--root",
    join(tmp, name, "root"),
    "--state",
    join(tmp, name, "state"),
    "--address",
    join(tmp, name, "b.sock"),
  ];

  it("refuses a config with invalid TOML, naming file and line", () => {
    const cfg = join(tmp, "broken.toml");
    writeFileSync(cfg, 'version = 2\nroot = "/x"\n[grpc\n');
    const r = berthdSync(["--config", cfg, ...dirs("broken")]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /broken\.toml:3: invalid TOML/);
  });

  it("refuses a config with a wrong type, naming file, line and key", () => {
    const cfg = join(tmp, "type.toml");
    writeFileSync(cfg, 'version = 2\n\n[grpc]\n  gid = "wheel"\n');
    const r = berthdSync(["--config", cfg, ...dirs("type")]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /type\.toml:4: grpc\.gid: expected integer, got string/);
  });

  it("refuses a missing required plugin", () => {
    const cfg = join(tmp, "req.toml");
    writeFileSync(cfg, 'version = 2\nrequired_plugins = ["io.containerd.grpc.v1.nope"]\n');
    const r = berthdSync(["--config", cfg, ...dirs("req")]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /required plugin io\.containerd\.grpc\.v1\.nope not included/);
  });

  it("config default prints a complete containerd-style config; config dump merges the file", () => {
    const def = berthdSync(["config", "default"]);
    assert.equal(def.status, 0, def.stderr);
    const doc = parse(def.stdout) as Record<string, unknown>;
    assert.equal(doc.version, 2);
    assert.equal(doc.root, "/var/lib/berth");
    const plugins = doc.plugins as Record<string, Record<string, unknown>>;
    assert.equal(plugins["io.containerd.gc.v1.scheduler"]?.pause_threshold, 0.02);
    assert.equal(plugins["io.containerd.metadata.v1.bolt"]?.content_sharing_policy, "shared");
    assert.ok(plugins["io.containerd.snapshotter.v1.overlayfs"], "snapshotter config present");
    const cfg = join(tmp, "dump.toml");
    writeFileSync(
      cfg,
      'version = 2\noom_score = 7\n[plugins."io.containerd.gc.v1.scheduler"]\n  mutation_threshold = 5\n',
    );
    const dump = berthdSync(["--config", cfg, "--root", "/tmp/elsewhere", "config", "dump"]);
    assert.equal(dump.status, 0, dump.stderr);
    const d = parse(dump.stdout) as Record<string, unknown>;
    assert.equal(d.oom_score, 7);
    assert.equal(d.root, "/tmp/elsewhere");
    assert.equal(
      (d.plugins as Record<string, Record<string, unknown>>)["io.containerd.gc.v1.scheduler"]
        ?.mutation_threshold,
      5,
    );
  });

  it("serves on a 0660 socket owned by the configured uid/gid, refuses a second daemon, replaces a stale socket", async () => {
    const d = await startBerthd({ config: "version = 2\n[grpc]\n  uid = 4321\n  gid = 8765\n" });
    try {
      const st = statSync(d.address);
      assert.ok(st.isSocket());
      assert.equal(st.mode & 0o777, 0o660);
      assert.equal(st.uid, 4321);
      assert.equal(st.gid, 8765);
      const second = berthdSync([
        "--root",
        join(tmp, "second", "root"),
        "--state",
        join(tmp, "second", "state"),
        "--address",
        d.address,
      ]);
      assert.equal(second.status, 1);
      assert.match(second.stderr, new RegExp(`another daemon is already serving on ${d.address}`));
      await d.kill9();
      assert.ok(statSync(d.address).isSocket(), "a killed daemon leaves its socket behind");
      // restart on the same socket path: the stale file is replaced
      const again = spawn(
        process.execPath,
        [BERTHD, "--root", d.root, "--state", d.state, "--address", d.address],
        {
          stdio: ["ignore", "ignore", "pipe"],
        },
      );
      try {
        let answered = false;
        for (let i = 0; i < 100 && !answered; i++) {
          answered = (await ctr(d.address, ["version"], { timeoutMs: 5000 })).code === 0;
          if (!answered) await new Promise((r) => setTimeout(r, 100));
        }
        assert.ok(answered, "berthd serves again on the stale socket's path");
      } finally {
        again.kill("SIGTERM");
        await new Promise((r) => again.once("exit", r));
      }
    } finally {
      await d.cleanup();
    }
  });

  it("applies oom_score, and keeps running when lowering it is not permitted", async () => {
    const up = await startBerthd({ config: "version = 2\noom_score = 500\n" });
    try {
      assert.equal(readFileSync(`/proc/${up.pid}/oom_score_adj`, "utf8").trim(), "500");
    } finally {
      await up.cleanup();
    }
    const down = await startBerthd({ config: "version = 2\noom_score = -999\n" });
    try {
      ok(await ctr(down.address, ["version"]));
      const adj = Number(readFileSync(`/proc/${down.pid}/oom_score_adj`, "utf8").trim());
      if (adj !== -999) assert.match(down.logs(), /failed to adjust OOM score for daemon/);
    } finally {
      await down.cleanup();
    }
  });

  it("runs with the malloc and V8 settings its first line names", async () => {
    // bin/berthd.js is started as a program (by the unit, `make run` and the tests): `env -S`
    // must pass glibc's malloc tunables and Node's flags through (docs/design-notes.md, "Memory")
    const want = berthdFirstLine(BERTHD);
    assert.deepEqual(want.env, {
      MALLOC_ARENA_MAX: "2",
      MALLOC_MMAP_THRESHOLD_: String(4 << 20),
      MALLOC_TRIM_THRESHOLD_: String(64 << 20),
    });
    assert.deepEqual(want.nodeArgs, ["--max-semi-space-size=4"]);
    const d = await startBerthd();
    try {
      const environ = readFileSync(`/proc/${d.pid}/environ`, "latin1").split("\0");
      for (const [k, v] of Object.entries(want.env)) assert.ok(environ.includes(`${k}=${v}`), `${k}=${v}`);
      const argv = readFileSync(`/proc/${d.pid}/cmdline`, "latin1").split("\0");
      assert.ok(argv.includes("--max-semi-space-size=4"), argv.join(" "));
    } finally {
      await d.cleanup();
    }
  });

  it("tells systemd it is ready (sd_notify READY=1 on $NOTIFY_SOCKET)", async () => {
    const sock = join(tmp, "notify.sock");
    // A unix datagram listener (Node has none): python3 prints the first message it receives.
    const listener = spawn("python3", [
      "-c",
      "import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nprint('bound',flush=True)\nprint(s.recv(4096).decode(),flush=True)",
      sock,
    ]);
    let out = "";
    listener.stdout.on("data", (c: Buffer) => {
      out += c.toString();
    });
    for (let i = 0; i < 100 && !out.includes("bound"); i++) await new Promise((r) => setTimeout(r, 50));
    const d = await startBerthd({ env: { ...process.env, NOTIFY_SOCKET: sock } });
    try {
      for (let i = 0; i < 100 && !out.includes("READY=1"); i++) await new Promise((r) => setTimeout(r, 50));
      assert.match(out, /READY=1/);
    } finally {
      listener.kill();
      await d.cleanup();
    }
  });

  it("kill -9 during an ingest: namespaces, leases and content survive; the ingest resumes or aborts", async () => {
    const d = await startBerthd({ config: `version = 2\n${GC_OFF_CONFIG}` });
    const file = join(tmp, "resume.bin");
    const data = randomBytes(24 << 20);
    writeFileSync(file, data);
    const digest = `sha256:${createHash("sha256").update(data).digest("hex")}`;
    let conn = new Connection(d.address);
    let restarted: Awaited<ReturnType<typeof startBerthd>> | undefined;
    try {
      ok(await ctr(d.address, ["ns", "create", "keepme", "a=b"]));
      ok(await ctr(d.address, ["leases", "create", "--id", "held"]));
      const small = join(tmp, "small.txt");
      writeFileSync(small, "committed before the crash\n");
      ok(await ctr(d.address, ["content", "ingest", "small-ref"], { input: { file: small } }));

      // two half-written ingests, one to resume and one to abort
      const content = conn.client(Content);
      for (const ref of ["resume-ref", "abort-ref"]) {
        const call = content.write({ namespace: "default" });
        await call.send({
          action: WriteAction.WRITE,
          ref,
          total: BigInt(data.length),
          expected: digest,
          offset: 0n,
          data: data.subarray(0, 8 << 20),
        });
        const it = call.responses[Symbol.asyncIterator]();
        const first = await it.next();
        assert.equal(first.value?.offset, BigInt(8 << 20));
        call.cancel();
      }
      await d.kill9();
      conn.close();

      restarted = await startBerthd({
        root: d.root,
        state: d.state,
        config: `version = 2\n${GC_OFF_CONFIG}`,
      });
      conn = new Connection(restarted.address);
      assert.match(ok(await ctr(restarted.address, ["ns", "ls"])), /^keepme\s+a=b/m);
      assert.match(ok(await ctr(restarted.address, ["leases", "ls", "-q"])), /^held$/m);
      assert.match(ok(await ctr(restarted.address, ["content", "ls"])), /sha256:[0-9a-f]{64}\s+27B/);
      const active = ok(await ctr(restarted.address, ["content", "active"]));
      assert.match(active, /^resume-ref\s+8\.389MB/m);
      assert.match(active, /^abort-ref\s/m);

      // ctr resumes from the stored offset (it seeks its input) and commits the whole blob
      ok(
        await ctr(
          restarted.address,
          [
            "content",
            "ingest",
            "--expected-size",
            String(data.length),
            "--expected-digest",
            digest,
            "resume-ref",
          ],
          {
            input: { file },
          },
        ),
        "resume",
      );
      const out = join(tmp, "resume.out");
      assert.equal(
        (await ctr(restarted.address, ["content", "get", digest], { output: { file: out } })).code,
        0,
      );
      assert.equal(createHash("sha256").update(readFileSync(out)).digest("hex"), digest.slice(7));

      await conn.client(Content).abort({ ref: "abort-ref" }, { namespace: "default" });
      assert.doesNotMatch(ok(await ctr(restarted.address, ["content", "active"])), /abort-ref/);
    } finally {
      conn.close();
      await restarted?.cleanup();
      await d.cleanup();
    }
  });
});
