// The CRI stream server without containers: one-time tokens, protocol negotiation, the remote
// command channels over SPDY and WebSocket (driven by a handler that echoes stdin, writes stderr
// and exits with a code from its command), and port forwarding to a loopback TCP server.
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, it } from "node:test";
import { nopLogger } from "../../src/base/log.js";
import { dialPod } from "../../src/cri/streaming/portforward.js";
import { ResizeDecoder, statusMessage, type TerminalSize } from "../../src/cri/streaming/remotecommand.js";
import { StreamServer, streamingKeyPair } from "../../src/cri/streaming/server.js";
import { TokenCache } from "../../src/cri/streaming/tokens.js";
import { rawRequest, spdyExec, spdyPortForward } from "../helpers/spdy-client.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";
import { wsExec, wsPortForward } from "../helpers/ws-client.js";

const execReq = (cmd: string[], o: Partial<{ stdin: boolean; stderr: boolean; tty: boolean }> = {}) => ({
  kind: "exec" as const,
  req: {
    containerId: "c",
    cmd,
    tty: o.tty ?? false,
    stdin: o.stdin ?? true,
    stdout: true,
    stderr: o.stderr ?? true,
  },
});

describe("stream tokens and status", () => {
  it("hands out single-use tokens that expire", () => {
    let now = 1000;
    const c = new TokenCache<string>(60_000, () => now);
    const a = c.put("a");
    const b = c.put("b");
    assert.notEqual(a, b);
    assert.match(a, /^[A-Za-z0-9_-]{32}$/);
    assert.equal(c.take(a), "a");
    assert.equal(c.take(a), undefined);
    now += 60_000;
    assert.equal(c.take(b), undefined);
    assert.equal(c.take("nope"), undefined);
  });

  it("writes v1.Status for v4 and the plain message before", () => {
    assert.deepEqual(JSON.parse(statusMessage("v4.channel.k8s.io", { exitCode: 0 })!), {
      metadata: {},
      status: "Success",
    });
    const s = JSON.parse(statusMessage("v5.channel.k8s.io", { exitCode: 7 })!);
    assert.equal(s.status, "Failure");
    assert.equal(s.reason, "NonZeroExitCode");
    assert.deepEqual(s.details.causes, [{ reason: "ExitCode", message: "7" }]);
    assert.equal(statusMessage("v3.channel.k8s.io", { exitCode: 0 }), undefined);
    assert.match(statusMessage("v2.channel.k8s.io", { exitCode: 3 })!, /non-zero exit code: exit status 3/);
    assert.equal(statusMessage("channel.k8s.io", { error: "boom" }), "boom");
  });

  it("decodes a stream of resize objects however it is split", () => {
    const got: TerminalSize[] = [];
    const d = new ResizeDecoder((s) => got.push(s));
    const text = '{"Width":80,"Height":24}\n{"Width":100,"Height":40}{"Width":1,';
    for (const ch of text) d.push(ch);
    d.push('"Height":2}');
    assert.deepEqual(got, [
      { width: 80, height: 24 },
      { width: 100, height: 40 },
      { width: 1, height: 2 },
    ]);
  });
});

describe("stream server", () => {
  let server: StreamServer;
  let echo: net.Server;
  let echoPort: number;
  const resizes: TerminalSize[] = [];

  before(async () => {
    server = new StreamServer({
      address: "127.0.0.1",
      port: 0,
      idleTimeoutMs: 0,
      tokenTtlMs: 500,
      log: nopLogger,
      handlers: {
        // stdin echoed to stdout, "E:"+cmd[1] to stderr, exit code cmd[0]
        async exec(req, rc) {
          rc.resize.on("resize", (s: TerminalSize) => resizes.push(s));
          rc.stderr?.write(`E:${req.cmd[1] ?? ""}`);
          if (rc.stdin) {
            rc.stdin.on("data", (b: Buffer) => rc.stdout?.write(b));
            await new Promise((r) => rc.stdin!.once("end", r));
          }
          await new Promise((r) => setTimeout(r, 50));
          await rc.finish({ exitCode: Number(req.cmd[0]) });
        },
        async attach(_req, rc) {
          await rc.finish({});
        },
      },
    });
    await server.start();
    echo = net.createServer((s) => {
      s.on("data", (b) => s.write(`echo:${b}`));
      s.on("end", () => s.end());
    });
    await new Promise<void>((r) => echo.listen(0, "127.0.0.1", r));
    echoPort = (echo.address() as net.AddressInfo).port;
  });

  after(async () => {
    await server.stop();
    echo.close();
  });

  it("refuses unknown, reused and expired tokens with 404", async () => {
    const url = server.register(execReq(["0"]));
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/exec\/[A-Za-z0-9_-]+$/);
    assert.equal((await rawRequest(`${server.url}/exec/unknown`, {})).status, 404);
    await spdyExec(url, { stdin: "x", stderr: true });
    const reused = await rawRequest(url, { Connection: "Upgrade", Upgrade: "SPDY/3.1" });
    assert.equal(reused.status, 404);
    const late = server.register(execReq(["0"]));
    await new Promise((r) => setTimeout(r, 600));
    assert.equal((await rawRequest(late, { Connection: "Upgrade", Upgrade: "SPDY/3.1" })).status, 404);
    // a token of one kind does not open another
    const pf = server.register({
      kind: "portforward",
      podSandboxId: "p",
      podName: "p",
      dial: () => dialPod("", 1),
    });
    assert.equal((await rawRequest(pf.replace("/portforward/", "/exec/"), {})).status, 404);
  });

  it("negotiates the SPDY protocol and refuses ones it does not speak", async () => {
    const r = await rawRequest(server.register(execReq(["0"])), {
      Connection: "Upgrade",
      Upgrade: "SPDY/3.1",
      "X-Stream-Protocol-Version": "v9.channel.k8s.io",
    });
    assert.equal(r.status, 403);
    assert.match(r.body, /unable to negotiate protocol/);
    const res = await spdyExec(server.register(execReq(["0"])), {
      protocols: ["v9.channel.k8s.io", "v3.channel.k8s.io", "v4.channel.k8s.io"],
      stdin: "hi",
      stderr: true,
    });
    assert.equal(res.protocol, "v3.channel.k8s.io");
    assert.equal(res.stdout, "hi");
    assert.equal(res.error, "");
  });

  for (const protocol of ["v4.channel.k8s.io", "v2.channel.k8s.io"]) {
    it(`carries stdin, stdout, stderr and the exit code over SPDY ${protocol}`, async () => {
      const res = await spdyExec(server.register(execReq(["7", "x"])), {
        protocols: [protocol],
        stdin: "hello\n",
        stderr: true,
      });
      assert.equal(res.stdout, "hello\n");
      assert.equal(res.stderr, "E:x");
      if (protocol.startsWith("v4")) {
        const st = JSON.parse(res.error);
        assert.equal(st.reason, "NonZeroExitCode");
        assert.deepEqual(st.details.causes, [{ reason: "ExitCode", message: "7" }]);
      } else assert.match(res.error, /exit status 7/);
    });
  }

  it("passes resize messages of a TTY session", async () => {
    resizes.length = 0;
    await spdyExec(server.register(execReq(["0"], { tty: true, stderr: false })), {
      stdin: "x",
      tty: true,
      resize: [{ Width: 120, Height: 33 }],
    });
    assert.deepEqual(resizes, [{ width: 120, height: 33 }]);
  });

  for (const protocol of ["v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io"]) {
    it(`carries the channels over WebSocket ${protocol}`, async () => {
      resizes.length = 0;
      const res = await wsExec(server.register(execReq(["7", "w"], { stdin: protocol.startsWith("v5") })), {
        protocols: [protocol],
        stdin: protocol.startsWith("v5") ? "abc" : undefined,
        resize: [{ Width: 10, Height: 5 }],
      });
      assert.equal(res.protocol, protocol);
      assert.equal(res.stdout, protocol.startsWith("v5") ? "abc" : "");
      assert.equal(res.stderr, "E:w");
      assert.equal(JSON.parse(res.error).details.causes[0].message, "7");
      assert.equal(res.closeCode, 1000);
      assert.deepEqual(resizes, [{ width: 10, height: 5 }]);
    });
  }

  it("forwards 20 concurrent SPDY connections and survives a refused port", async () => {
    const pf = await spdyPortForward(
      server.register({
        kind: "portforward",
        podSandboxId: "p",
        podName: "p",
        dial: (port) => dialPod("", port),
      }),
    );
    assert.equal(pf.protocol, "portforward.k8s.io");
    const one = (i: number) =>
      new Promise<string>((resolve) => {
        const c = pf.connect(echoPort);
        let out = "";
        c.data.on("data", (b: Buffer) => {
          out += b.toString();
        });
        c.data.once("end", () => resolve(out));
        c.data.end(`m${i}`);
      });
    const outs = await Promise.all(Array.from({ length: 20 }, (_, i) => one(i)));
    assert.deepEqual(
      outs,
      Array.from({ length: 20 }, (_, i) => `echo:m${i}`),
    );
    // a closed port: an error on that request's error stream, the session goes on
    const closed = await new Promise<number>((r) => {
      const s = net.createServer().listen(0, "127.0.0.1", () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => r(p));
      });
    });
    const bad = pf.connect(closed);
    bad.data.resume();
    assert.match(await bad.error, new RegExp(`error forwarding port ${closed} to pod p: .*ECONNREFUSED`));
    assert.equal(await one(99), "echo:m99");
    pf.close();
  });

  it("forwards a port over WebSocket with the port-number preamble", async () => {
    const f = await wsPortForward(
      server.register({
        kind: "portforward",
        podSandboxId: "p",
        podName: "p",
        dial: (port) => dialPod("", port),
      }),
      echoPort,
    );
    f.send("ws");
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(f.portHeaders.length, 2);
    assert.equal(f.portHeaders[0]!.readUInt16LE(0), echoPort);
    f.close();
    const r = await f.result();
    assert.equal(r.data, "echo:ws");
  });

  it("closes a connection idle for stream_idle_timeout", async () => {
    const idle = new StreamServer({
      address: "127.0.0.1",
      port: 0,
      idleTimeoutMs: 300,
      log: nopLogger,
      handlers: { exec: () => new Promise(() => {}), attach: async (_r, rc) => rc.finish({}) },
    });
    await idle.start();
    try {
      const url = idle.register({
        kind: "portforward",
        podSandboxId: "p",
        podName: "p",
        dial: (port) => dialPod("", port),
      });
      const pf = await spdyPortForward(url);
      const t0 = Date.now();
      await new Promise<void>((r) => pf.session.once("close", () => r()));
      assert.ok(Date.now() - t0 >= 250, "closed too early");
    } finally {
      await idle.stop();
    }
  });

  it("serves TLS with a generated self-signed pair", async () => {
    const dir = await makeTempDir("stream-tls");
    const tlsServer = new StreamServer({
      address: "127.0.0.1",
      port: 0,
      idleTimeoutMs: 0,
      tls: await streamingKeyPair("", "", dir),
      log: nopLogger,
      handlers: {
        exec: async (_r, rc) => {
          rc.stdout?.write("secure");
          await rc.finish({ exitCode: 0 });
        },
        attach: async (_r, rc) => rc.finish({}),
      },
    });
    await tlsServer.start();
    try {
      const url = tlsServer.register(execReq(["0"], { stdin: false, stderr: false }));
      assert.match(url, /^https:/);
      const res = await spdyExec(url, {});
      assert.equal(res.stdout, "secure");
      assert.deepEqual(JSON.parse(res.error), { metadata: {}, status: "Success" });
    } finally {
      await tlsServer.stop();
      await removeTempDir(dir);
    }
  });
});
