// `berth run --log-uri` with the URIs containerd's cio writes, handled by the real runc shim under
// berthd: `file://` appends stdout and stderr to a file, `binary://` starts a logging program with
// the query as arguments and the streams on fds 3 and 4. ctr sends the same URIs for comparison.
import assert from "node:assert/strict";
import { chmodSync, existsSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { binaryIO, logFileIO } from "../../src/core/cio/index.js";
import { setChildSubreaper } from "../../src/sys/reaper.js";
import { berth, ctr, ok, type RunResult } from "../helpers/ctr.js";
import { type Daemon, killShimsOf, startBerthd } from "../helpers/daemons.js";
import { buildBusyboxImage, pushImage } from "../helpers/images.js";
import { until } from "../helpers/procs.js";
import { type Registry, startRegistry } from "../helpers/registry.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const REPO = "test/busybox";
const NS = "run-logs-test";

// A logging binary as the shim runs it: stdout on fd 3, stderr on fd 4, fd 5 closed when ready.
// The shim closes the streams and sends SIGTERM when the task is deleted; ignoring the signal lets
// it record that both streams reached EOF.
const LOGGER = `#!/bin/sh
trap '' TERM
out="$2"
echo "$CONTAINER_NAMESPACE $CONTAINER_ID $1" > "$out.meta"
exec 5>&-
cat <&3 > "$out.out" &
cat <&4 > "$out.err"
wait
echo done >> "$out.meta"
`;

describe("log URIs through the shim", () => {
  let reg: Registry;
  let d: Daemon;
  let ref: string;
  let tmp: string;
  const b = (args: string[]) => berth(d.address, args, { namespace: NS, timeoutMs: 60_000 });

  before(async () => {
    setChildSubreaper(true);
    reg = await startRegistry();
    await pushImage(reg.url, REPO, "1", buildBusyboxImage());
    ref = `${reg.host}/${REPO}:1`;
    d = await startBerthd({ config: "version = 2\n" });
    ok(await ctr(d.address, ["images", "pull", "--plain-http", ref], { namespace: NS }), "pull");
    tmp = await makeTempDir("run-logs");
  });

  after(async () => {
    if (d) {
      const r = await berth(d.address, ["c", "ls", "-q"], { namespace: NS }).catch(() => undefined);
      for (const id of (r?.stdout ?? "").split("\n").filter(Boolean)) {
        await berth(d.address, ["t", "rm", "-f", id], { namespace: NS }).catch(() => {});
        await berth(d.address, ["c", "rm", id], { namespace: NS }).catch(() => {});
      }
      killShimsOf(d.address);
      await d.cleanup();
    }
    try {
      rmdirSync(`/run/containerd/runc/${NS}`);
    } catch {
      // not empty or never made
    }
    if (tmp) await removeTempDir(tmp);
    await reg?.cleanup();
  });

  it("file:// appends both streams to the file (made with its directory), as with ctr", async () => {
    const cmd = ["sh", "-c", "echo out; echo err >&2; exit 4"];
    // The shim copies the process's output into the file and, on delete, waits at most 2 s for
    // that copy (containerd's runc shim): on a loaded machine a run can lose its last line. So
    // each client gets two tries, each with a file of its own; one complete file is the pass.
    const runLogged = async (who: string, run: (file: string, name: string) => Promise<RunResult>) => {
      for (let attempt = 1; ; attempt++) {
        const file = path.join(tmp, `${who} dir`, `c${attempt}.log`);
        const r = await run(file, `l-file-${who}-${attempt}`);
        assert.equal(r.code, 4, r.stderr);
        assert.equal(r.stdout, "");
        const complete = () => existsSync(file) && readFileSync(file, "utf8").length >= 8;
        try {
          await until(`${who}'s log file`, complete, 5000);
          return file;
        } catch (err) {
          if (attempt === 2) throw err;
        }
      }
    };
    const mine = await runLogged("berth", (file, name) =>
      b(["run", "--rm", "--log-uri", logFileIO(file).stdout, ref, name, ...cmd]),
    );
    const theirs = await runLogged("ctr", (file, name) =>
      ctr(d.address, ["run", "--rm", "--log-uri", `file://${file}`, ref, name, ...cmd], { namespace: NS }),
    );
    const sorted = (f: string) => readFileSync(f, "utf8").split("\n").sort().join("\n");
    assert.equal(sorted(mine), sorted(theirs));
    assert.equal(sorted(mine), "\nerr\nout");
    // a second run appends
    ok(await b(["run", "--rm", "--log-uri", `file://${mine}`, ref, "l-file2", "echo", "again"]));
    await until("appended", () => readFileSync(mine, "utf8").includes("again\n"));
  });

  it("binary:// runs the logger with the query as arguments and the streams on fds 3 and 4", async () => {
    const logger = path.join(tmp, "logger.sh");
    writeFileSync(logger, LOGGER);
    chmodSync(logger, 0o755);
    const out = path.join(tmp, "bin");
    const uri = binaryIO(logger, { path: out }).stdout;
    assert.equal(uri, `binary://${logger}?path=${encodeURIComponent(out)}`);
    const r = await b([
      "run",
      "--rm",
      "--log-uri",
      uri,
      ref,
      "l-bin",
      "sh",
      "-c",
      "echo to-out; echo to-err >&2",
    ]);
    assert.equal(r.code, 0, r.stderr + d.logs().slice(-2000));
    await until(
      "logger finished",
      () => existsSync(`${out}.meta`) && readFileSync(`${out}.meta`, "utf8").includes("done"),
    );
    assert.equal(readFileSync(`${out}.meta`, "utf8"), `${NS} l-bin path\ndone\n`);
    assert.equal(readFileSync(`${out}.out`, "utf8"), "to-out\n");
    assert.equal(readFileSync(`${out}.err`, "utf8"), "to-err\n");
  });
});
