// Debian's dockerd 20.10 on a berthd (`--containerd` = berthd's socket), confined to a temp dir:
// its own data-root, exec-root, pidfile, socket and CLI config; no firewall, bridge or forwarding
// changes. Driven with the Debian docker CLI by path (a newer CLI may come first on PATH).
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, openSync, readFileSync, rmdirSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { type RunResult, run } from "./ctr.js";
import type { Daemon } from "./daemons.js";
import { isGone } from "./procs.js";
import { makeTempDir, onExitBeforeRemoval, removeTempDir } from "./tmp.js";

export const DOCKER_BIN = "/usr/bin/docker";
export const DOCKERD_BIN = "/usr/sbin/dockerd";

export const haveDocker = existsSync(DOCKER_BIN) && existsSync(DOCKERD_BIN);
/** For `describe(…, { skip })`: false when docker.io is installed, else why not. */
export const dockerSkipReason: string | false = haveDocker
  ? false
  : `docker.io is not installed (${DOCKERD_BIN} or ${DOCKER_BIN} missing): run \`make debs\``;

export interface Dockerd {
  readonly dir: string;
  readonly socket: string;
  /** The docker CLI against this dockerd. */
  docker(args: string[], timeoutMs?: number): Promise<RunResult>;
  /** dockerd's log so far. */
  logs(): string;
  /** The last lines of berthd's and dockerd's logs, for a failure message. */
  diag(): string;
  /**
   * Removes every container, stops dockerd (SIGTERM, SIGKILL after 20 s) and removes its dir.
   * With BERTH_TEST_LOG_DIR=<dir> set, both daemons' logs are kept there first.
   */
  cleanup(): Promise<void>;
}

/** Starts dockerd on `berthd` and waits until `docker version` answers (60 s at most). */
export async function startDockerd(berthd: Daemon, name = "dockerd"): Promise<Dockerd> {
  /** dockerd always makes /run/docker/plugins (plugin discovery is not under --exec-root). */
  const runDockerExisted = existsSync("/run/docker");
  const dir = await makeTempDir(name);
  const socket = path.join(dir, "docker.sock");
  const logPath = path.join(dir, "dockerd.log");
  await mkdir(path.join(dir, "cli"), { recursive: true });
  // the trust key would go to /etc/docker/key.json otherwise (settable only in the config file)
  await writeFile(
    path.join(dir, "daemon.json"),
    JSON.stringify({ "deprecated-key-path": path.join(dir, "key.json") }),
  );
  const logFd = openSync(logPath, "a");
  const args = [
    `--containerd=${berthd.address}`,
    "--config-file",
    path.join(dir, "daemon.json"),
    "--data-root",
    path.join(dir, "docker"),
    "--exec-root",
    path.join(dir, "exec"),
    "--pidfile",
    path.join(dir, "docker.pid"),
    "-H",
    `unix://${socket}`,
    "--iptables=false",
    "--ip6tables=false",
    "--bridge=none",
    "--ip-forward=false",
    "--ip-masq=false",
    "--userland-proxy=false",
    "--storage-driver=overlay2",
    "--log-level=debug",
  ];
  let child: ChildProcess | undefined = spawn(DOCKERD_BIN, args, { stdio: ["ignore", logFd, logFd] });
  const pid = child.pid ?? 0;
  onExitBeforeRemoval(() => {
    if (pid > 0 && !isGone(pid)) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }
  });

  const logs = () => {
    try {
      return readFileSync(logPath, "utf8");
    } catch {
      return "";
    }
  };
  const docker = (a: string[], timeoutMs = 60_000): Promise<RunResult> =>
    run(DOCKER_BIN, ["-H", `unix://${socket}`, ...a], {
      timeoutMs,
      env: { ...process.env, DOCKER_CONFIG: path.join(dir, "cli") },
    });
  const diag = () =>
    `\n--- berthd ---\n${berthd.logs().slice(-4000)}\n--- dockerd ---\n${logs().slice(-4000)}`;

  const stop = async () => {
    const c = child;
    if (!c || pid === 0) return;
    const exited = new Promise<void>((r) => {
      if (c.exitCode !== null || c.signalCode !== null) r();
      else c.once("exit", () => r());
    });
    try {
      process.kill(pid, "SIGTERM");
    } catch {
      // gone
    }
    const t = setTimeout(() => {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }, 20_000);
    await exited;
    clearTimeout(t);
    child = undefined;
  };

  const cleanup = async () => {
    const keep = process.env.BERTH_TEST_LOG_DIR;
    if (keep) {
      await mkdir(keep, { recursive: true });
      await writeFile(path.join(keep, "berthd.log"), berthd.logs());
      await writeFile(path.join(keep, "dockerd.log"), logs());
    }
    if (child) {
      const ps = await docker(["ps", "-aq"], 20_000).catch(() => undefined);
      for (const id of ps?.stdout.split("\n").filter(Boolean) ?? [])
        await docker(["rm", "-f", id], 30_000).catch(() => {});
    }
    await stop();
    await removeTempDir(dir);
    if (!runDockerExisted) {
      for (const p of ["/run/docker/plugins", "/run/docker"]) {
        try {
          rmdirSync(p);
        } catch {
          // not empty: something else uses it now
        }
      }
    }
  };

  const end = Date.now() + 60_000;
  try {
    for (;;) {
      if (child.exitCode !== null) throw new Error(`dockerd exited (${child.exitCode}):${diag()}`);
      if (existsSync(socket)) {
        const r = await docker(["version", "--format", "{{.Server.Version}}"], 10_000);
        if (r.code === 0) break;
      }
      if (Date.now() > end) throw new Error(`dockerd did not come up:${diag()}`);
      await sleep(200);
    }
  } catch (err) {
    await cleanup();
    throw err;
  }
  return { dir, socket, docker, logs, diag, cleanup };
}
