// Start berthd or the real containerd on temp roots and a temp socket, wait until they answer
// Version/Version, and stop them again. Only processes started here are ever signalled (by PID);
// an exit hook kills any that a test left running before the temp dirs are removed.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import type { Socket } from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { Version } from "../../src/gen/containerd/services/version/v1/version_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { isGone, procs as listAllProcs } from "./procs.js";
import { makeTempDir, onExitBeforeRemoval, onShutdown, removeTempDir } from "./tmp.js";

export const CONTAINERD_BIN = "/usr/bin/containerd";

/**
 * Config text (for `config`) that keeps the GC scheduler from ever collecting: no startup run, no
 * trigger by deletions or mutations. Content that ctr ingests carries no lease, and containerd
 * collects it within a second or so otherwise.
 */
export const GC_OFF_CONFIG = [
  '[plugins."io.containerd.gc.v1.scheduler"]',
  '  startup_delay = "0s"',
  "  deletion_threshold = 1000000",
  "  mutation_threshold = 0",
  "",
].join("\n");

/** The repository root (the folder holding berth's package.json), from source or from dist/. */
export const repoRoot: string = (() => {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = path.join(dir, "package.json");
    if (existsSync(pkg)) {
      try {
        if (JSON.parse(readFileSync(pkg, "utf8")).name === "berth") return dir;
      } catch {
        // keep looking upwards
      }
    }
    const up = path.dirname(dir);
    if (up === dir)
      throw new Error("test helpers: cannot find berth's package.json above " + import.meta.url);
    dir = up;
  }
})();

export interface DaemonOptions {
  /**
   * The gRPC socket path. Default: `<tempdir>/berth.sock` (containerd: `containerd.sock`). Pass an
   * exited daemon's address (with its root and state) to start again on the same socket, so shims it
   * launched (their `-address` and TTRPC_ADDRESS) and clients keep matching; `restartDaemon` does this.
   */
  address?: string;
  /** Root dir (persistent data). Default: <tempdir>/root. Pass a previous daemon's root to restart on it. */
  root?: string;
  /** State dir (runtime data). Default: <tempdir>/state. */
  state?: string;
  /**
   * TOML. berthd: the whole config file. containerd: extra text placed after the generated top-level
   * keys (version, root, state, disabled_plugins) and before its [grpc] table; do not repeat those.
   */
  config?: string;
  /** Extra command-line arguments. */
  args?: string[];
  /**
   * Plugins to disable. containerd's default: the CRI plugin. berthd's default: none (its config is
   * the caller's); given, `disabled_plugins` is put at the top of berthd's config.
   */
  disabledPlugins?: string[];
  /** Log level passed to the daemon (default "info"). */
  logLevel?: string;
  /** How long to wait for Version/Version to answer (default 30 s). */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Daemon {
  readonly kind: "berthd" | "containerd";
  /** The gRPC unix socket path (what ctr's --address takes). */
  readonly address: string;
  readonly root: string;
  readonly state: string;
  /** The temp dir made for this daemon (socket, config, and root/state unless given). */
  readonly dir: string;
  readonly configPath: string;
  readonly pid: number;
  /** Resolves when the process has exited. */
  readonly exited: Promise<ExitInfo>;
  running(): boolean;
  /** Signals the daemon (default SIGTERM) and waits for it to exit; SIGKILL after `timeoutMs` (10 s). */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<ExitInfo>;
  /** SIGKILL, as a crash would; waits for the exit. */
  kill9(): Promise<ExitInfo>;
  /** Everything the daemon wrote to stdout and stderr so far (the last 8 MiB). */
  logs(): string;
  /**
   * Stops the daemon if running, kills shims it launched for this socket (and their children), and
   * removes its temp dir (unmounting anything below it). Root/state passed in by the caller and lying
   * outside that dir are left alone. While another daemon started here still runs on the same socket
   * (a restart), shims and the temp dir are left to that daemon's cleanup, which then removes both;
   * so clean up a crashed daemon only once its restart is up (or after that has been cleaned up).
   */
  cleanup(): Promise<void>;
}

const LOG_CAP = 8 << 20;

/** Daemons started here that have not exited yet, by PID. */
const liveChildren = new Map<number, ChildProcess>();
/** Daemons started here on one socket (several after restarts) and the dirs awaiting removal. */
interface AddressUse {
  /** Started and not cleaned up yet. */
  members: Set<{ running(): boolean }>;
  /** Temp dirs of cleaned-up members, removed once no member runs any more. */
  dirs: string[];
}
/** Daemon sockets started here, for killing their shims at exit. */
const addressUses = new Map<string, AddressUse>();
/** How each daemon was started, for restartDaemon. */
const startedWith = new WeakMap<Daemon, DaemonOptions>();

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

const argAfter = (argv: string[], flag: string) => {
  const i = argv.indexOf(flag);
  return i >= 0 ? argv[i + 1] : undefined;
};

/**
 * Shims started by a daemon carry `-address <daemon socket>` on their command line. For each: asks
 * runc to force-delete the shim's container (runc keeps its state under /run/containerd/runc/<ns>,
 * shared by every daemon on the machine, so a stale entry would block that id for later tests), then
 * SIGKILLs the shim and every process below it, children first. Returns the PIDs signalled.
 */
export function killShimsOf(address: string): number[] {
  const procs = listAllProcs();
  const shims = procs.filter(
    (p) => argAfter(p.argv, "-address") === address && p.argv.some((a) => a.includes("shim")),
  );
  if (shims.length === 0) return [];
  for (const s of shims) {
    const ns = argAfter(s.argv, "-namespace");
    const id = argAfter(s.argv, "-id");
    if (!ns || !id) continue;
    try {
      execFileSync("runc", ["--root", `/run/containerd/runc/${ns}`, "delete", "--force", id], {
        stdio: "ignore",
        timeout: 10_000,
      });
    } catch {
      // not a runc container, or already gone
    }
  }
  const children = new Map<number, number[]>();
  for (const p of procs) children.set(p.ppid, [...(children.get(p.ppid) ?? []), p.pid]);
  const order: number[] = [];
  const visit = (pid: number) => {
    for (const c of children.get(pid) ?? []) visit(c);
    order.push(pid);
  };
  for (const s of shims) visit(s.pid);
  // a killed shim cannot remove its socket under /run/containerd/s: its bundle (its cwd) names it
  const sockets: string[] = [];
  for (const s of shims) {
    try {
      const address = readFileSync(`/proc/${s.pid}/cwd/address`, "utf8").trim();
      if (address.startsWith("unix:///run/containerd/s/")) sockets.push(address.slice("unix://".length));
    } catch {
      // no bundle address (gone, or not a runc v2 shim)
    }
  }
  for (const pid of order) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  for (const path of sockets) rmSync(path, { force: true });
  return order;
}

// Leftovers at the end of a run: SIGKILL and reap them, then their shims.
onShutdown(async () => {
  if (liveChildren.size === 0 && addressUses.size === 0) return;
  await Promise.all(
    [...liveChildren.values()].map((child) => {
      child.ref();
      const gone = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGKILL");
      return gone;
    }),
  );
  for (const address of addressUses.keys()) killShimsOf(address);
  addressUses.clear();
});

// Last resort when the process exits directly (process.exit): SIGKILL without reaping.
onExitBeforeRemoval(() => {
  const livePids = [...liveChildren.keys()];
  for (const pid of livePids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  const deadline = Date.now() + 3000;
  while (livePids.some((p) => !isGone(p)) && Date.now() < deadline) sleepSync(20);
  for (const address of addressUses.keys()) killShimsOf(address);
});

interface SpawnSpec {
  kind: "berthd" | "containerd";
  command: string;
  args: string[];
  address: string;
  root: string;
  state: string;
  dir: string;
  configPath: string;
  ownsDir: boolean;
  timeoutMs: number;
  env?: NodeJS.ProcessEnv;
}

async function launch(spec: SpawnSpec): Promise<Daemon> {
  let output = "";
  const append = (chunk: Buffer) => {
    output += chunk.toString("utf8");
    if (output.length > LOG_CAP) output = output.slice(output.length - LOG_CAP);
  };
  const child: ChildProcess = spawn(spec.command, spec.args, {
    stdio: ["ignore", "pipe", "pipe"],
    env: spec.env ?? process.env,
  });
  const exited = new Promise<ExitInfo>((resolve) => {
    child.once("exit", (code, signal) => resolve({ code, signal }));
  });
  // A daemon left running must not keep a test process alive: the shutdown hook stops it instead.
  child.unref();
  (child.stdout as unknown as Socket).unref();
  (child.stderr as unknown as Socket).unref();
  const spawnError = new Promise<Error>((resolve) => child.once("error", resolve));
  child.stdout!.on("data", append);
  child.stderr!.on("data", append);
  let done = false;
  exited.then(() => {
    done = true;
    if (child.pid !== undefined) liveChildren.delete(child.pid);
  });
  if (child.pid === undefined) {
    const err = await spawnError;
    throw new Error(`cannot start ${spec.kind} (${spec.command}): ${err.message}`);
  }
  const pid = child.pid;
  liveChildren.set(pid, child);
  let use = addressUses.get(spec.address);
  if (!use) {
    use = { members: new Set(), dirs: [] };
    addressUses.set(spec.address, use);
  }
  const member = { running: () => !done };
  use.members.add(member);
  const addressUse = use;

  const stop = async (signal: NodeJS.Signals = "SIGTERM", timeoutMs = 10_000): Promise<ExitInfo> => {
    if (!done) {
      try {
        process.kill(pid, signal);
      } catch {
        // raced with the exit
      }
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), timeoutMs);
      });
      const first = await Promise.race([exited, timedOut]);
      clearTimeout(timer);
      if (first === "timeout" && !done) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // raced with the exit
        }
        // A process in uninterruptible sleep (disk I/O on a slow disk) dies only when that ends;
        // the child's handle does not keep the event loop alive, so hold it here meanwhile or the
        // test runner sees an empty loop with this promise pending (it then fails the suite).
        const hold = setInterval(() => {}, 1000);
        await exited.finally(() => clearInterval(hold));
      }
    }
    return exited;
  };

  const daemon: Daemon = {
    kind: spec.kind,
    address: spec.address,
    root: spec.root,
    state: spec.state,
    dir: spec.dir,
    configPath: spec.configPath,
    pid,
    get exited() {
      child.ref(); // someone waits for the exit: keep the process alive until it happens
      return exited;
    },
    running: () => !done,
    stop,
    kill9: () => stop("SIGKILL"),
    logs: () => output,
    cleanup: async () => {
      await stop();
      if (addressUse.members.delete(member) && spec.ownsDir) addressUse.dirs.push(spec.dir);
      // a daemon restarted on this socket still runs: its shims, socket and root stay for now
      if ([...addressUse.members].some((m) => m.running())) return;
      killShimsOf(spec.address);
      if (addressUse.members.size === 0 && addressUses.get(spec.address) === addressUse)
        addressUses.delete(spec.address);
      for (const dir of addressUse.dirs.splice(0)) await removeTempDir(dir);
    },
  };

  try {
    await waitReady(daemon, spec.timeoutMs);
  } catch (err) {
    await daemon.cleanup().catch(() => {});
    const tail = output.length > 4000 ? `…${output.slice(-4000)}` : output;
    throw new Error(
      `${spec.kind} did not become ready on ${spec.address}: ${(err as Error).message}\n` +
        `command: ${spec.command} ${spec.args.join(" ")}\n--- ${spec.kind} output ---\n${tail}`,
    );
  }
  return daemon;
}

/** Waits until the socket exists and Version/Version answers; fails early if the daemon exits. */
async function waitReady(d: Daemon, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastErr = "socket not created";
  while (Date.now() < deadline) {
    if (!d.running()) {
      const e = await d.exited;
      throw new Error(`exited early (code ${e.code}, signal ${e.signal})`);
    }
    if (existsSync(d.address)) {
      // A fresh connection per attempt: grpc-js backs off after a failed connect.
      const conn = new Connection(d.address);
      try {
        await conn
          .client(Version)
          .version({}, { timeoutMs: Math.max(100, Math.min(2000, deadline - Date.now())) });
        return;
      } catch (err) {
        lastErr = (err as Error).message;
      } finally {
        conn.close();
      }
    }
    await sleep(25);
  }
  throw new Error(`timed out after ${timeoutMs} ms (last error: ${lastErr})`);
}

async function prepare(kind: string, opts: DaemonOptions) {
  const dir = await makeTempDir(kind);
  const root = opts.root ?? path.join(dir, "root");
  const state = opts.state ?? path.join(dir, "state");
  await mkdir(root, { recursive: true, mode: 0o711 });
  await mkdir(state, { recursive: true, mode: 0o711 });
  return { dir, root, state, configPath: path.join(dir, "config.toml") };
}

/**
 * Starts berthd on temp dirs, as an operator does: bin/berthd.js run as a program, so the Node
 * settings in its first line apply. Resolves once it answers Version/Version.
 */
const tomlString = (s: string) => JSON.stringify(s);

/** The CRI plugin: the benchmarks other than bench/cri.ts run both daemons without it. */
export const CRI_PLUGIN = "io.containerd.grpc.v1.cri";

export async function startBerthd(opts: DaemonOptions = {}): Promise<Daemon> {
  const entry = path.join(repoRoot, "dist/bundle/berthd.cjs");
  if (!existsSync(entry)) throw new Error(`berthd is not built: ${entry} is missing (run make build)`);
  const { dir, root, state, configPath } = await prepare("berthd", opts);
  const address = opts.address ?? path.join(dir, "berth.sock");
  const disabled = opts.disabledPlugins
    ? `disabled_plugins = [${opts.disabledPlugins.map(tomlString).join(", ")}]\n`
    : "";
  await writeFile(configPath, disabled + (opts.config ?? ""));
  const args = [
    "--config",
    configPath,
    "--root",
    root,
    "--state",
    state,
    "--address",
    address,
    "--log-level",
    opts.logLevel ?? "info",
    ...(opts.args ?? []),
  ];
  // BERTHD_CPU_PROF_DIR (profiling, docs/performance.md): run berthd under `node --cpu-prof` with
  // the same V8 and malloc settings bin/berthd.js's first line gives it; the profile is written
  // when the daemon exits.
  const profDir = process.env.BERTHD_CPU_PROF_DIR;
  const bin = path.join(repoRoot, "bin/berthd.js");
  const launcher = profDir ? berthdFirstLine(bin) : undefined;
  const d = await launch({
    kind: "berthd",
    command: launcher ? process.execPath : bin,
    args: launcher ? ["--cpu-prof", `--cpu-prof-dir=${profDir}`, ...launcher.nodeArgs, bin, ...args] : args,
    env: launcher ? { ...(opts.env ?? process.env), ...launcher.env } : opts.env,
    address,
    root,
    state,
    dir,
    configPath,
    ownsDir: true,
    timeoutMs: opts.timeoutMs ?? 30_000,
  });
  startedWith.set(d, opts);
  return d;
}

/**
 * The environment and Node flags in bin/berthd.js's first line (`#!/usr/bin/env -S VAR=value …
 * node --flag …`), for running it under a Node started by hand with the same settings.
 */
export function berthdFirstLine(bin: string): { env: Record<string, string>; nodeArgs: string[] } {
  const first = readFileSync(bin, "utf8").split("\n", 1)[0]!;
  const m = /^#!\/usr\/bin\/env -S (.*)$/.exec(first);
  if (!m) throw new Error(`${bin}: first line ${JSON.stringify(first)} is not "#!/usr/bin/env -S …"`);
  const words = m[1]!.trim().split(/\s+/);
  const node = words.indexOf("node");
  if (node < 0) throw new Error(`${bin}: first line names no node`);
  const env: Record<string, string> = {};
  for (const w of words.slice(0, node)) {
    const eq = w.indexOf("=");
    if (eq <= 0) throw new Error(`${bin}: ${JSON.stringify(w)} in its first line is not VAR=value`);
    env[w.slice(0, eq)] = w.slice(eq + 1);
  }
  return { env, nodeArgs: words.slice(node + 1) };
}

/** Starts the real /usr/bin/containerd on temp dirs; resolves once it answers Version/Version. */
export async function startContainerd(opts: DaemonOptions = {}): Promise<Daemon> {
  if (!existsSync(CONTAINERD_BIN)) throw new Error(`${CONTAINERD_BIN} is not installed`);
  const { dir, root, state, configPath } = await prepare("containerd", opts);
  const address = opts.address ?? path.join(dir, "containerd.sock");
  const disabled = opts.disabledPlugins ?? ["io.containerd.grpc.v1.cri"];
  const config = [
    "version = 2",
    `root = ${tomlString(root)}`,
    `state = ${tomlString(state)}`,
    `disabled_plugins = [${disabled.map(tomlString).join(", ")}]`,
    "",
    opts.config ?? "",
    "",
    "[grpc]",
    `  address = ${tomlString(address)}`,
    "",
  ].join("\n");
  await writeFile(configPath, config);
  const args = ["--config", configPath, "--log-level", opts.logLevel ?? "info", ...(opts.args ?? [])];
  const d = await launch({
    kind: "containerd",
    command: CONTAINERD_BIN,
    args,
    address,
    root,
    state,
    dir,
    configPath,
    ownsDir: true,
    timeoutMs: opts.timeoutMs ?? 30_000,
  });
  startedWith.set(d, opts);
  return d;
}

/**
 * Starts the same kind of daemon again on an exited one's socket, root and state (after `kill9` or
 * `stop`), with the options it was started with unless `opts` overrides them. The new daemon gets a
 * temp dir of its own (config); the socket stays in the old one's dir, which is removed when both
 * have been cleaned up, so clean up both (in either order).
 */
export async function restartDaemon(prev: Daemon, opts: DaemonOptions = {}): Promise<Daemon> {
  if (prev.running()) throw new Error(`restartDaemon: ${prev.kind} ${prev.pid} is still running`);
  const same = {
    ...startedWith.get(prev),
    ...opts,
    address: prev.address,
    root: prev.root,
    state: prev.state,
  };
  return prev.kind === "berthd" ? startBerthd(same) : startContainerd(same);
}
