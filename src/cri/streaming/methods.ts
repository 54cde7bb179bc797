// The RuntimeService's streaming calls, Exec, Attach and PortForward: each checks its request and
// answers with a one-time URL on the stream server (started with the CRI plugin,
// startStreamServer), as containerd's CRI does. The work happens when the client connects there.
import { join } from "node:path";
import { parseDuration } from "../../base/duration.js";
import { errFailedPrecondition, errInvalidArgument, errUnavailable } from "../../base/errdefs.js";
import type { CriDeps, RuntimeMethods } from "../context.js";
import { criState } from "../state.js";
import { serveAttach } from "./attach.js";
import { serveExec } from "./exec.js";
import { dialPod } from "./portforward.js";
import { StreamServer, streamingKeyPair } from "./server.js";

const servers = new WeakMap<CriDeps, StreamServer>();

/** Start the stream server of this CRI plugin instance (stopped at daemon shutdown). */
export async function startStreamServer(deps: CriDeps): Promise<StreamServer> {
  const existing = servers.get(deps);
  if (existing) return existing;
  const cfg = deps.config;
  const st = criState(deps);
  const port = Number(cfg.stream_server_port || "0");
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new Error(`invalid stream_server_port ${JSON.stringify(cfg.stream_server_port)}`);
  const tls = cfg.enable_tls_streaming
    ? await streamingKeyPair(
        cfg.x509_key_pair_streaming.tls_cert_file,
        cfg.x509_key_pair_streaming.tls_key_file,
        join(deps.rootDir, "streaming"),
      )
    : undefined;
  const server = new StreamServer({
    address: cfg.stream_server_address,
    port,
    tls,
    idleTimeoutMs: parseDuration(cfg.stream_idle_timeout || "0"),
    log: deps.log,
    handlers: {
      exec: (req, rc) => serveExec(st, req, rc),
      attach: (req, rc) => serveAttach(st, req, rc),
    },
  });
  await server.start();
  servers.set(deps, server);
  deps.onClose(() => server.stop());
  return server;
}

function serverOf(deps: CriDeps): StreamServer {
  const s = servers.get(deps);
  if (!s) throw errUnavailable("the CRI stream server is not running");
  return s;
}

export function streamingMethods(deps: CriDeps): RuntimeMethods {
  const st = criState(deps);
  const running = (id: string) => {
    const c = st.store.container(id);
    if (c.status.state !== "running")
      throw errFailedPrecondition(`container ${JSON.stringify(c.id)} is in ${c.status.state} state`);
    return c;
  };
  return {
    async exec(req) {
      await st.ready;
      if (req.cmd.length === 0) throw errInvalidArgument("cmd must not be empty");
      if (!req.stdin && !req.stdout && !req.stderr)
        throw errInvalidArgument("one of stdin, stdout, or stderr must be set");
      if (req.tty && req.stderr) throw errInvalidArgument("tty and stderr cannot both be true");
      const c = running(req.containerId);
      const url = serverOf(deps).register({
        kind: "exec",
        req: {
          containerId: c.id,
          cmd: req.cmd,
          tty: req.tty,
          stdin: req.stdin,
          stdout: req.stdout,
          stderr: req.stderr,
        },
      });
      return { url };
    },

    async attach(req) {
      await st.ready;
      if (!req.stdin && !req.stdout && !req.stderr)
        throw errInvalidArgument("one of stdin, stdout, or stderr must be set");
      if (req.tty && req.stderr) throw errInvalidArgument("tty and stderr cannot both be true");
      const c = running(req.containerId);
      if (req.stdin && !c.config.stdin)
        throw errInvalidArgument(`container ${c.id} was not created with stdin: attach cannot write to it`);
      const url = serverOf(deps).register({
        kind: "attach",
        req: { containerId: c.id, tty: req.tty, stdin: req.stdin, stdout: req.stdout, stderr: req.stderr },
      });
      return { url };
    },

    async portForward(req) {
      await st.ready;
      const s = st.store.sandbox(req.podSandboxId);
      if (s.status.state !== "ready")
        throw errFailedPrecondition(`sandbox container ${JSON.stringify(s.id)} is not running`);
      const netns = s.netnsPath;
      const meta = s.config.metadata;
      const url = serverOf(deps).register({
        kind: "portforward",
        podSandboxId: s.id,
        podName: meta ? `${meta.name}_${meta.namespace}` : s.id,
        dial: (port) => dialPod(netns, port),
      });
      return { url };
    },
  };
}
