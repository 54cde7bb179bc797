// Issue 11: CRI streaming on a real berthd with a real pod (busybox image from a local registry,
// real CNI bridge + host-local on the test's own bridge and 10.88.X.0/24 subnet): Exec, Attach and
// PortForward URLs driven with the project's SPDY and WebSocket clients.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { NamespaceMode } from "../../src/gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { type CriClient, criClient, criTestConfig, pushPauseImage } from "../helpers/cri.js";
import { type Daemon, startBerthd } from "../helpers/daemons.js";
import { buildBusyboxImage, pushImage } from "../helpers/images.js";
import { freeSubnetOctets, writeBridgeConflist } from "../helpers/net.js";
import { descendants, until } from "../helpers/procs.js";
import { type Registry, startRegistry } from "../helpers/registry.js";
import { rawRequest, spdyConnect, spdyExec, spdyPortForward } from "../helpers/spdy-client.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";
import { wsConnect, wsExec, wsPortForward } from "../helpers/ws-client.js";

const execFileP = promisify(execFile);
const BB = "/bin/busybox";
const sh = (script: string) => [BB, "sh", "-c", script];

/** An HTTP/1.0 GET written to `w`, the whole answer read from `r`. */
/** The size of /www/big in the web container, served for the large port-forward checks. */
const BIG_MIB = 24;

function httpGet(stream: NodeJS.ReadWriteStream): Promise<string> {
  return new Promise((resolve) => {
    let out = "";
    stream.on("data", (b: Buffer) => {
      out += b.toString();
    });
    stream.once("end", () => resolve(out));
    stream.once("close", () => resolve(out));
    stream.end("GET /index.html HTTP/1.0\r\n\r\n");
  });
}

describe("CRI streaming: exec, attach and port-forward", { timeout: 300_000 }, () => {
  let tmp: string;
  let reg: Registry;
  let d: Daemon;
  let cri: CriClient;
  let bridge: string;
  let pod: string;
  let web: string;
  let ticker: string;
  let reader: string;
  let tickerLog: string;

  before(async () => {
    tmp = await makeTempDir("cri-stream");
    reg = await startRegistry();
    await pushImage(reg.url, "test/busybox", "1", buildBusyboxImage());
    await pushPauseImage(reg.url);
    const busyboxRef = `${reg.host}/test/busybox:1`;
    const subnet = freeSubnetOctets("10.88")[0]!;
    bridge = `bstr${randomBytes(3).toString("hex")}`;
    const confDir = path.join(tmp, "net.d");
    writeBridgeConflist({
      confDir,
      file: "10-test.conflist",
      name: "crit",
      bridge,
      subnet: `10.88.${subnet}.0/24`,
      ipamDir: path.join(tmp, "ipam"),
    });
    const config = criTestConfig({
      registryHost: reg.host,
      confDir,
      cri: ["  netns_mounts_under_state_dir = true"],
    });
    d = await startBerthd({ config, root: path.join(tmp, "root"), state: path.join(tmp, "state") });
    cri = criClient(d.address);
    await cri.image.pullImage({ image: { image: busyboxRef } });
    const podConfig = {
      metadata: {
        name: "stream",
        namespace: "default",
        uid: `uid-${randomBytes(3).toString("hex")}`,
        attempt: 0,
      },
      hostname: "stream",
      logDirectory: path.join(tmp, "logs"),
      linux: {},
    };
    pod = (await cri.runtime.runPodSandbox({ config: podConfig })).podSandboxId;
    const container = async (name: string, command: string[], extra: Record<string, unknown> = {}) => {
      const { containerId } = await cri.runtime.createContainer({
        podSandboxId: pod,
        sandboxConfig: podConfig,
        config: {
          metadata: { name, attempt: 0 },
          image: { image: busyboxRef },
          command,
          logPath: `${name}.log`,
          linux: { securityContext: { namespaceOptions: { pid: NamespaceMode.CONTAINER } } },
          ...extra,
        },
      });
      await cri.runtime.startContainer({ containerId });
      return containerId;
    };
    web = await container(
      "web",
      sh(
        `${BB} mkdir -p /www; echo served > /www/index.html; ${BB} dd if=/dev/zero of=/www/big bs=1048576 count=${BIG_MIB} 2>/dev/null; exec ${BB} httpd -f -p 8080 -h /www`,
      ),
    );
    ticker = await container(
      "ticker",
      sh(`i=0; while true; do echo tick $i; i=$((i+1)); ${BB} sleep 0.2; done`),
    );
    tickerLog = path.join(podConfig.logDirectory, "ticker.log");
    // waits for a line on stdin: nothing reaches it until an attacher writes one
    reader = await container("reader", sh("read line; echo got-$line"), { stdin: true, stdinOnce: true });
  });

  after(async () => {
    try {
      for (const p of (await cri.runtime.listPodSandbox({})).items) {
        await cri.runtime.stopPodSandbox({ podSandboxId: p.id }).catch(() => {});
        await cri.runtime.removePodSandbox({ podSandboxId: p.id }).catch(() => {});
      }
    } catch {
      // the daemon is gone
    }
    cri?.close();
    await d?.cleanup();
    await reg?.cleanup();
    await execFileP("ip", ["link", "del", bridge]).catch(() => {});
    if (tmp) await removeTempDir(tmp);
  });

  const execUrl = async (cmd: string[], o: { tty?: boolean; stdin?: boolean; stderr?: boolean } = {}) =>
    (
      await cri.runtime.exec({
        containerId: web,
        cmd,
        tty: o.tty ?? false,
        stdin: o.stdin ?? true,
        stdout: true,
        stderr: o.stderr ?? !o.tty,
      })
    ).url;

  it("refuses a used token, and bad requests at the RPC", async () => {
    const url = await execUrl([BB, "true"], { stdin: false });
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/exec\/[A-Za-z0-9_-]+$/);
    const r = await spdyExec(url, { stderr: true });
    assert.deepEqual(JSON.parse(r.error), { metadata: {}, status: "Success" });
    assert.equal((await rawRequest(url, { Connection: "Upgrade", Upgrade: "SPDY/3.1" })).status, 404);
    await assert.rejects(
      cri.runtime.exec({ containerId: web, cmd: [BB, "true"], tty: true, stderr: true, stdout: true }),
      /tty and stderr/,
    );
    await assert.rejects(
      cri.runtime.exec({ containerId: "nope", cmd: [BB, "true"], stdout: true }),
      /not found/,
    );
  });

  it("execs over SPDY: stdin echoed, stderr apart, exit code 7 on the error stream", async () => {
    const url = await execUrl(sh(`${BB} cat; echo to-err >&2; exit 7`));
    const r = await spdyExec(url, { stdin: "hello\n", stderr: true });
    assert.equal(r.protocol, "v4.channel.k8s.io");
    assert.equal(r.stdout, "hello\n");
    assert.equal(r.stderr, "to-err\n");
    const st = JSON.parse(r.error);
    assert.equal(st.status, "Failure");
    assert.equal(st.reason, "NonZeroExitCode");
    assert.deepEqual(st.details.causes, [{ reason: "ExitCode", message: "7" }]);
    // an older protocol gets the plain message
    const old = await spdyExec(await execUrl(sh("exit 7"), { stdin: false }), {
      protocols: ["v2.channel.k8s.io"],
      stderr: true,
    });
    assert.match(old.error, /exit status 7/);
  });

  it("execs over WebSocket (v5 and base64): stdin echoed, stderr apart, exit code 7", async () => {
    for (const protocol of ["v5.channel.k8s.io", "v4.base64.channel.k8s.io"]) {
      const v5 = protocol.startsWith("v5");
      const url = await execUrl(sh(`${v5 ? `${BB} cat` : "echo hello"}; echo to-err >&2; exit 7`), {
        stdin: v5,
      });
      const r = await wsExec(url, { protocols: [protocol], stdin: v5 ? "hello\n" : undefined });
      assert.equal(r.protocol, protocol);
      assert.equal(r.stdout, "hello\n");
      assert.equal(r.stderr, "to-err\n");
      assert.equal(JSON.parse(r.error).details.causes[0].message, "7");
    }
  });

  it("execs with a TTY whose size follows the resize channel (SPDY and WebSocket)", async () => {
    const script = sh(`read x; ${BB} stty size`);
    const a = await spdyExec(await execUrl(script, { tty: true }), {
      tty: true,
      resize: [{ Width: 123, Height: 45 }],
      stdin: "go\n",
      stdinHoldMs: 3000,
    });
    assert.match(a.stdout, /45 123\r\n/);
    assert.deepEqual(JSON.parse(a.error), { metadata: {}, status: "Success" });
    const b = await wsExec(await execUrl(script, { tty: true }), {
      resize: [{ Width: 77, Height: 22 }],
      stdin: "go\n",
      closeStdin: false,
    });
    assert.match(b.stdout, /22 77\r\n/);
  });

  it("kills an exec whose client went away", async () => {
    const url = await execUrl(sh(`${BB} sleep 1234`), { stdin: false });
    const { session } = await spdyConnect(url, ["v4.channel.k8s.io"]);
    session.open({ streamType: "error" }).end();
    session.open({ streamType: "stdout" }).end();
    session.open({ streamType: "stderr" }).end();
    const ps = async () =>
      Buffer.from((await cri.runtime.execSync({ containerId: web, cmd: [BB, "ps"] })).stdout).toString();
    let seen = "";
    const t0 = Date.now();
    while (!seen.includes("sleep 1234") && Date.now() - t0 < 10_000) seen = await ps();
    assert.match(seen, /sleep 1234/);
    session.destroy();
    let now = seen;
    const t1 = Date.now();
    while (now.includes("sleep 1234") && Date.now() - t1 < 10_000) now = await ps();
    assert.doesNotMatch(now, /sleep 1234/);
  });

  it("forwards a port over SPDY: 20 concurrent connections, a closed port errs and the session lives", async () => {
    const { url } = await cri.runtime.portForward({ podSandboxId: pod, port: [8080] });
    assert.match(url, /\/portforward\//);
    const pf = await spdyPortForward(url);
    try {
      const answers = await Promise.all(Array.from({ length: 20 }, () => httpGet(pf.connect(8080).data)));
      for (const a of answers) assert.match(a, /^HTTP\/1\.[01] 200[\s\S]*served\n$/);
      const bad = pf.connect(8099);
      bad.data.resume();
      bad.data.end();
      assert.match(
        await bad.error,
        /error forwarding port 8099 to pod stream_default: .*(refused|can't connect)/i,
      );
      assert.match(await httpGet(pf.connect(8080).data), /served/);
      // an open connection has its relay under berthd; closing the session ends it
      const idle = pf.connect(8080);
      idle.data.resume();
      const relays = () => descendants(d.pid).filter((p) => p.argv.includes("nc"));
      await until("a relay process", () => relays().length === 1);
    } finally {
      pf.close();
    }
    await until("no relay left after the session closed", () =>
      descendants(d.pid).every((p) => !p.argv.includes("nc")),
    );
  });

  it("forwards a large body intact to a client that reads slowly, over SPDY and WebSocket", async () => {
    // regression: the relay could exit while the body's last bytes were still queued behind the
    // client's flow control, and the data stream was ended without them (the tail was lost)
    const body = (raw: Buffer) => raw.subarray(raw.indexOf("\r\n\r\n") + 4).length;
    const { url } = await cri.runtime.portForward({ podSandboxId: pod, port: [8080] });
    const pf = await spdyPortForward(url);
    try {
      const conn = pf.connect(8080);
      const parts: Buffer[] = [];
      let got = 0;
      let nextPause = 1 << 20;
      const done = new Promise<void>((resolve, reject) => {
        conn.data.on("data", (b: Buffer) => {
          parts.push(b);
          got += b.length;
          if (got >= nextPause) {
            // a slow reader: the pod's side runs ahead and fills every buffer on the way
            nextPause += 4 << 20;
            conn.data.pause();
            setTimeout(() => conn.data.resume(), 300);
          }
        });
        conn.data.once("end", () => resolve());
        conn.data.once("error", reject);
      });
      conn.data.write("GET /big HTTP/1.0\r\n\r\n");
      await done;
      assert.equal(body(Buffer.concat(parts)), BIG_MIB << 20, "SPDY port-forward body length");
    } finally {
      pf.close();
    }
    const { url: url2 } = await cri.runtime.portForward({ podSandboxId: pod, port: [8080] });
    const f = await wsPortForward(url2, 8080);
    f.send("GET /big HTTP/1.0\r\n\r\n");
    const r = await f.result();
    assert.equal(body(Buffer.from(r.data, "latin1")), BIG_MIB << 20, "WebSocket port-forward body length");
  });

  it("forwards a port over WebSocket", async () => {
    const { url } = await cri.runtime.portForward({ podSandboxId: pod, port: [8080] });
    const f = await wsPortForward(url, 8080);
    f.send("GET /index.html HTTP/1.0\r\n\r\n");
    const r = await f.result();
    assert.match(r.data, /200[\s\S]*served/);
    assert.equal(f.portHeaders[0]!.readUInt16LE(0), 8080);
    const { url: url2 } = await cri.runtime.portForward({ podSandboxId: pod, port: [8099] });
    const g = await wsPortForward(url2, 8099);
    const e = await g.result();
    assert.match(e.error, /error forwarding port 8099/);
  });

  it("attaches two clients (SPDY and WebSocket) to a running container's output; detaching keeps it", async () => {
    const attachUrl = async () =>
      (await cri.runtime.attach({ containerId: ticker, stdout: true, stderr: true })).url;
    // SPDY attacher: error and stdout/stderr streams, read until some ticks came
    const { session } = await spdyConnect(await attachUrl(), ["v4.channel.k8s.io"]);
    session.open({ streamType: "error" }).end();
    const out = session.open({ streamType: "stdout" });
    out.end();
    session.open({ streamType: "stderr" }).end();
    let spdyOut = "";
    out.on("data", (b: Buffer) => {
      spdyOut += b.toString();
    });
    // WebSocket attacher
    const { ws } = await wsConnect(await attachUrl(), ["v4.channel.k8s.io"]);
    let wsOut = "";
    ws.on("message", (m: Buffer) => {
      if (m[0] === 1) wsOut += m.subarray(1).toString();
    });
    await until(
      "both attachers see ticks",
      () => /tick \d+\n/.test(spdyOut) && /tick \d+\n/.test(wsOut),
      10_000,
    );
    const shared = (s: string) => new Set(s.match(/tick \d+/g));
    await until(
      "attachers see the same lines",
      () => [...shared(spdyOut)].some((l) => shared(wsOut).has(l)),
      10_000,
    );
    session.destroy();
    ws.close();
    await new Promise((r) => setTimeout(r, 500));
    const st = await cri.runtime.containerStatus({ containerId: ticker });
    assert.equal(st.status?.state, 1 /* CONTAINER_RUNNING */);
    // the log still gets every line, attached or not
    const before = readFileSync(tickerLog, "utf8").split("\n").length;
    await until(
      "log grows after detach",
      () => readFileSync(tickerLog, "utf8").split("\n").length > before + 2,
      10_000,
    );
    await assert.rejects(
      cri.runtime.attach({ containerId: ticker, stdin: true, stdout: true }),
      /was not created with stdin/,
    );
  });

  it("attach with stdin writes into a stdin container; with stdin_once its end closes the input", async () => {
    const { url } = await cri.runtime.attach({ containerId: reader, stdin: true, stdout: true });
    const r = await wsExec(url, { stdin: "hello\n", protocols: ["v5.channel.k8s.io"] });
    assert.match(r.stdout, /got-hello/);
    let st: { state: number; exitCode: number } | undefined;
    for (const end = Date.now() + 10_000; Date.now() < end; await new Promise((r) => setTimeout(r, 100))) {
      st = (await cri.runtime.containerStatus({ containerId: reader })).status;
      if (st?.state === 2) break; // CONTAINER_EXITED: the line came and stdin closed
    }
    assert.equal(st?.state, 2, "the reader exited once its line came");
    assert.equal(st?.exitCode, 0);
  });
});
