// fastSpawn (posix_spawn): stdio pipes, exit codes and signals, environment, cwd, session,
// signal dispositions reset in the child, and start-up errors in child_process's shape.
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import type { Readable } from "node:stream";
import { test } from "node:test";
import { Worker } from "node:worker_threads";
import { fastSpawn, fastSpawnAsync, runCollect, spawnsInFlight } from "../../src/sys/spawn.js";

const SH = "/bin/sh";

async function collect(r: Readable | null): Promise<string> {
  if (!r) return "";
  const parts: Buffer[] = [];
  for await (const b of r) parts.push(b as Buffer);
  return Buffer.concat(parts).toString("utf8");
}

test("stdin is piped in, stdout and stderr come back, exit code reported", async () => {
  const c = fastSpawn(SH, ["-c", "read l; echo out:$l; echo err:$l >&2; exit 7"], { env: {} });
  c.stdin!.end("hello\n");
  const [out, err, st] = await Promise.all([collect(c.stdout), collect(c.stderr), c.exited]);
  assert.equal(out, "out:hello\n");
  assert.equal(err, "err:hello\n");
  assert.deepEqual(st, { code: 7, signal: null });
});

test("the child gets exactly the given environment and working directory", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "spawn-"));
  try {
    const c = fastSpawn(SH, ["-c", 'echo "$FOO|$HOME|$(pwd)"'], { env: { FOO: "bar baz" }, cwd: dir });
    const [out, st] = await Promise.all([collect(c.stdout), c.exited]);
    assert.equal(out, `bar baz||${dir}\n`);
    assert.equal(st.code, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a signal ends the child and is reported by name", async () => {
  const c = fastSpawn(SH, ["-c", "exec sleep 30"], { env: {}, stdio: ["ignore", "ignore", "ignore"] });
  c.kill("SIGKILL");
  assert.deepEqual(await c.exited, { code: null, signal: "SIGKILL" });
});

test("no standard signal is ignored or blocked in the child (Node ignores SIGPIPE and SIGXFSZ)", async () => {
  const c = fastSpawn(SH, ["-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status"], { env: {} });
  const out = await collect(c.stdout);
  await c.exited;
  // Signals 1–31. glibc's posix_spawn leaves its own internal signals (32, 33) ignored in the
  // child of a threaded parent; a glibc program installs its handlers for them again at start-up.
  for (const line of out.trim().split("\n")) {
    const mask = BigInt(`0x${line.split(/\s+/)[1]}`);
    assert.equal(mask & 0x7fffffffn, 0n, line);
  }
});

test("detached starts a new session", async () => {
  const c = fastSpawn(SH, ["-c", "cut -d' ' -f6 /proc/self/stat"], { env: {}, detached: true });
  const out = await collect(c.stdout);
  await c.exited;
  assert.equal(Number(out.trim()), c.pid, "the child leads its own session");
});

test("a missing program fails synchronously with ENOENT naming it", () => {
  assert.throws(
    () => fastSpawn("/nonexistent/prog", [], { env: {} }),
    (e: NodeJS.ErrnoException) => e.code === "ENOENT" && e.message.includes("/nonexistent/prog"),
  );
});

test("a child that exits without reading stdin leaves an EPIPE the caller can ignore", async () => {
  const c = fastSpawn(SH, ["-c", "exit 3"], { env: {} });
  c.stdin!.on("error", () => {});
  await new Promise((r) => setTimeout(r, 50));
  c.stdin!.end(Buffer.alloc(1 << 20));
  assert.equal((await c.exited).code, 3);
});

test("many children in parallel are each reaped with their own status", async () => {
  const kids = Array.from({ length: 40 }, (_, i) =>
    fastSpawn(SH, ["-c", `exit ${i}`], { env: {}, stdio: ["ignore", "pipe", "ignore"] }),
  );
  const codes = await Promise.all(kids.map((k) => k.exited.then((s) => s.code)));
  assert.deepEqual(
    codes,
    kids.map((_, i) => i),
  );
});

test("fastSpawnAsync: spawned from a pool thread, with the same stdio, status and errors", async () => {
  assert.equal(spawnsInFlight(), 0);
  const pending = fastSpawnAsync(SH, ["-c", 'read l; echo "out:$l:$FOO"; exit 5'], { env: { FOO: "x" } });
  assert.equal(spawnsInFlight(), 1, "counted until its PID is known");
  const c = await pending;
  assert.equal(spawnsInFlight(), 0);
  c.stdin!.end("hi\n");
  assert.equal(await collect(c.stdout), "out:hi:x\n");
  assert.equal((await c.exited).code, 5);
  await assert.rejects(
    fastSpawnAsync("/nonexistent/prog", [], { env: {} }),
    (e: NodeJS.ErrnoException) => e.code === "ENOENT" && e.message.includes("/nonexistent/prog"),
  );
  assert.equal(spawnsInFlight(), 0, "a failed spawn is not left counted");
  const kids = await Promise.all(
    Array.from({ length: 40 }, (_, i) =>
      fastSpawnAsync(SH, ["-c", `exit ${i}`], { env: {}, stdio: ["ignore", "ignore", "ignore"] }),
    ),
  );
  assert.deepEqual(
    await Promise.all(kids.map((k) => k.exited.then((s) => s.code))),
    kids.map((_, i) => i),
  );
});

test("runCollect: output, status, and an abort while the spawn is under way kills the child", async () => {
  const r = await runCollect(SH, ["-c", "cat; echo err >&2; exit 2"], { env: {}, stdin: Buffer.from("in") });
  assert.deepEqual([r.code, r.stdout.toString(), r.stderr.toString()], [2, "in", "err\n"]);
  const ac = new AbortController();
  const run = runCollect(SH, ["-c", "exec sleep 30"], { env: {}, signal: ac.signal });
  ac.abort(new Error("stop"));
  const t0 = Date.now();
  await assert.rejects(run, /stop/);
  assert.ok(Date.now() - t0 < 5000, "the child was killed, not waited for");
});

test("on a worker thread (no signal events), an exit after a long run is seen within ms of the output's end", async () => {
  // Worker threads get no SIGCHLD events, so there only the polls see a child's exit: one at
  // its output's EOF (often too early: the kernel closes the pipes first) and the backing-off
  // timer, which after a second of the child's life is at 1 s. The child runs 1.2 s, closes its
  // output, and exits 0.1 s later: the polls after EOF must start again from 1 ms (the layer
  // extractions' `zstd` runs on such threads). Without that, the exit is seen ~0.9 s late.
  const dir = mkdtempSync(path.join(tmpdir(), "spawn-"));
  try {
    const stamp = path.join(dir, "exit-ns");
    const script = `sleep 1.2; exec >&- 2>&-; sleep 0.1; date +%s%N > ${stamp}`;
    const code = `
      const { parentPort, workerData } = require("node:worker_threads");
      import(workerData.spawnUrl).then(async ({ fastSpawn }) => {
        const c = fastSpawn("/bin/sh", ["-c", workerData.script], { env: { PATH: "/usr/bin:/bin" } });
        c.stdout.resume();
        c.stderr.resume();
        const st = await c.exited;
        parentPort.postMessage({ st, seenMs: Date.now() });
      });`;
    const spawnUrl = new URL("../../src/sys/spawn.js", import.meta.url).href;
    const w = new Worker(code, { eval: true, workerData: { spawnUrl, script } });
    try {
      const [msg] = (await once(w, "message")) as [{ st: unknown; seenMs: number }];
      assert.deepEqual(msg.st, { code: 0, signal: null });
      const exitedMs = Number(BigInt(readFileSync(stamp, "utf8").trim()) / 1_000_000n);
      const lagMs = msg.seenMs - exitedMs;
      assert.ok(lagMs < 300, `exit seen ${lagMs} ms after it happened`);
    } finally {
      await w.terminate();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("an exit is seen when it happens, not at the next poll, when the pipes closed long before", async () => {
  // The child closes its stdout and stderr at once (so the EOF poll finds it still running),
  // lives 0.7 s, notes the time and exits. The backing-off timer alone would see the exit at
  // ~1.02 s (1 + 2 + … + 512 ms); SIGCHLD makes it seen right away.
  const dir = mkdtempSync(path.join(tmpdir(), "spawn-"));
  try {
    const stamp = path.join(dir, "exit-ns");
    const c = fastSpawn(SH, ["-c", `exec >&- 2>&-; sleep 0.7; date +%s%N > ${stamp}`], {
      env: { PATH: "/usr/bin:/bin" },
    });
    const st = await c.exited;
    const seenNs = BigInt(Date.now()) * 1_000_000n;
    assert.deepEqual(st, { code: 0, signal: null });
    const exitedNs = BigInt(readFileSync(stamp, "utf8").trim());
    const lagMs = Number(seenNs - exitedNs) / 1e6;
    assert.ok(lagMs < 200, `exit seen ${lagMs.toFixed(0)} ms after it happened`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
