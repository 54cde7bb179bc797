// A runtime v2 shim written in Node, for tests of how berthd treats shims that misbehave in ways
// the real containerd-shim-runc-v2 cannot be made to. A test writes a two-line wrapper
//
//   #!/bin/sh
//   exec <node> <abs>/dist/test/helpers/fake-shim.js "$@"
//
// (fakeShimWrapper below) and names its absolute path as the container's runtime. berthd then runs
// it like any shim: `<flags> start` in the bundle, `<flags> -bundle B delete` after a dead shim.
// The behaviour is chosen per container by annotations of its OCI spec, read from the bundle's
// config.json (the shim inherits berthd's environment, shared by every case, so no env var):
//   berth.test/fake-shim.mode  "normal" (default), "deaf" (Shutdown answers {} and the server keeps
//                              running: a shim that lost or refused the request), "unreachable"
//                              (`start` prints the address of a socket nothing listens on; the
//                              server it spawned still runs and is named in shim.pid)
//   berth.test/fake-shim.dir   where the server's socket and `<id>.pid` (the server's PID, for the
//                              test: the bundle is gone once a failed create is cleaned up) go
//                              (default: the OS temp dir)
// The server runs with argv[0] `containerd-shim-fake-v2`, so that it looks like a shim in
// /proc/<pid>/cmdline (what berthd checks before it kills a shim by PID, and what the test helpers'
// shimsOf and killShimsOf look for); it keeps the flags of `start` for the same reason.
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { constants as osc, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { errNotFound, errorf } from "../../src/base/errdefs.js";
import { DeleteResponseSchema, Task } from "../../src/gen/containerd/runtime/v2/task/shim_pb.js";
import { Status } from "../../src/gen/containerd/types/task/task_pb.js";
import { TtrpcServer } from "../../src/ttrpc/server.js";

export type FakeShimMode = "normal" | "deaf" | "unreachable";
export const FAKE_SHIM_MODE = "berth.test/fake-shim.mode";
export const FAKE_SHIM_DIR = "berth.test/fake-shim.dir";
/** argv[0] of the server process. */
export const FAKE_SHIM_ARGV0 = "containerd-shim-fake-v2";

/** This module's compiled path (what the wrapper runs). */
export const FAKE_SHIM_JS = fileURLToPath(import.meta.url);

/** The wrapper script's text: a shim binary berthd can run (write it with mode 0755). */
export function fakeShimWrapper(): string {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  return `#!/bin/sh\nexec ${q(process.execPath)} ${q(FAKE_SHIM_JS)} "$@"\n`;
}

/** The server PID a fake `start` recorded for task `id` in `dir` (undefined when none was started). */
export function fakeShimPid(dir: string, id: string): number | undefined {
  try {
    return Number(readFileSync(join(dir, `${id}.pid`), "utf8").trim()) || undefined;
  } catch {
    return undefined;
  }
}

const flag = (argv: string[], name: string) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};

interface Setup {
  mode: FakeShimMode;
  dir: string;
}

function setupOf(bundle: string): Setup {
  let annotations: Record<string, string> = {};
  try {
    const spec = JSON.parse(readFileSync(join(bundle, "config.json"), "utf8")) as {
      annotations?: Record<string, string>;
    };
    annotations = spec.annotations ?? {};
  } catch {
    // no spec: the defaults
  }
  const m = annotations[FAKE_SHIM_MODE];
  const mode: FakeShimMode = m === "deaf" || m === "unreachable" ? m : "normal";
  return { mode, dir: annotations[FAKE_SHIM_DIR] || tmpdir() };
}

/** A short socket path per bundle (a unix socket path has a 108-byte limit). */
const socketOf = (dir: string, bundle: string) =>
  join(dir, `${createHash("sha256").update(bundle).digest("hex").slice(0, 12)}.sock`);

/** `start`: spawn the server, wait for its socket, record it in the bundle, print the address. */
async function start(argv: string[]): Promise<number> {
  const bundle = resolve(process.cwd());
  const id = flag(argv, "-id") ?? "";
  const { mode, dir } = setupOf(bundle);
  const sock = socketOf(dir, bundle);
  const flags = argv.slice(0, -1);
  rmSync(sock, { force: true }); // a stale one would look like the new server's
  const child = spawn(process.execPath, [FAKE_SHIM_JS, ...flags, "-socket", sock, "serve"], {
    argv0: FAKE_SHIM_ARGV0,
    cwd: bundle,
    detached: true,
    // nothing of berthd's pipes: `start` has ended for berthd only once they are all closed
    stdio: "ignore",
  });
  const pid = child.pid;
  if (pid === undefined) {
    process.stderr.write("fake shim: cannot spawn the server\n");
    return 1;
  }
  let exited = false;
  child.once("exit", () => {
    exited = true;
  });
  child.unref();
  for (const deadline = Date.now() + 10_000; !existsSync(sock); ) {
    if (exited || Date.now() > deadline) {
      process.stderr.write(`fake shim: the server did not listen on ${sock}\n`);
      return 1;
    }
    await sleep(10);
  }
  // unreachable: an address that was lost or mangled on the way; the server itself is fine
  const address = `unix://${mode === "unreachable" ? `${sock}.nobody` : sock}`;
  writeFileSync(join(dir, `${id}.pid`), String(pid));
  writeFileSync(join(bundle, "shim.pid"), String(pid));
  writeFileSync(join(bundle, "address"), address);
  process.stdout.write(address);
  return 0;
}

/** `delete` after a dead shim: nothing to clean up here, an exit status as runc's shim gives. */
function deleteDead(): number {
  const r = create(DeleteResponseSchema, {
    pid: 0,
    exitStatus: 137,
    exitedAt: timestampFromDate(new Date()),
  });
  process.stdout.write(toBinary(DeleteResponseSchema, r));
  return 0;
}

interface FakeTask {
  child: ChildProcess;
  pid: number;
  bundle: string;
  started: boolean;
  exit?: { status: number; at: Date };
  exited: Promise<void>;
}

/** `serve`: the Task service over ttrpc; each task's init process is a `sleep`. */
async function serve(argv: string[]): Promise<void> {
  const sock = flag(argv, "-socket");
  if (!sock) throw new Error("fake shim: serve without -socket");
  const { mode } = setupOf(process.cwd());
  const tasks = new Map<string, FakeTask>();
  const taskOf = (id: string, execId = "") => {
    const t = tasks.get(id);
    if (!t || execId) throw errNotFound(`task ${id}`);
    return t;
  };
  const timesOf = (t: FakeTask) => ({
    exitStatus: t.exit?.status ?? 0,
    exitedAt: t.exit ? timestampFromDate(t.exit.at) : undefined,
  });
  const server = new TtrpcServer();
  server.register(Task, {
    connect: (req) => ({ shimPid: process.pid, taskPid: tasks.get(req.id)?.pid ?? 0, version: "fake" }),
    create: (req) => {
      if (tasks.has(req.id)) throw errorf("already exists", `task ${req.id}: already exists`);
      const child = spawn("sleep", ["100000"], { stdio: "ignore" });
      if (child.pid === undefined) throw new Error("cannot spawn sleep");
      const t: FakeTask = {
        child,
        pid: child.pid,
        bundle: req.bundle,
        started: false,
        exited: new Promise((r) =>
          child.once("exit", (code, signal) => {
            t.exit = { status: signal ? 128 + osc.signals[signal] : (code ?? 0), at: new Date() };
            r();
          }),
        ),
      };
      tasks.set(req.id, t);
      return { pid: t.pid };
    },
    start: (req) => {
      const t = taskOf(req.id, req.execId);
      t.started = true;
      return { pid: t.pid };
    },
    state: (req) => {
      const t = taskOf(req.id, req.execId);
      const status = t.exit ? Status.STOPPED : t.started ? Status.RUNNING : Status.CREATED;
      return { id: req.id, bundle: t.bundle, pid: t.pid, status, ...timesOf(t) };
    },
    wait: async (req) => {
      const t = taskOf(req.id, req.execId);
      await t.exited;
      return timesOf(t);
    },
    kill: (req) => {
      const t = taskOf(req.id, req.execId);
      if (t.exit) throw errorf("not found", "process already finished: not found");
      t.child.kill(req.signal);
      return {};
    },
    delete: async (req) => {
      const t = taskOf(req.id, req.execId);
      if (!t.exit) {
        t.child.kill("SIGKILL");
        await t.exited;
      }
      tasks.delete(req.id);
      return { pid: t.pid, ...timesOf(t) };
    },
    pids: (req) => ({ processes: [{ pid: taskOf(req.id).pid }] }),
    shutdown: () => {
      // deaf: answered, and nothing else happens (the process keeps running for ever)
      if (mode === "deaf" || tasks.size > 0) return {};
      // after the answer has gone out: berthd sees the connection close as the shim going
      setTimeout(() => void server.close().finally(() => process.exit(0)), 20);
      return {};
    },
  });
  await server.listen(sock);
  process.on("SIGTERM", () => void server.close().finally(() => process.exit(0)));
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const action = argv[argv.length - 1];
  switch (action) {
    case "start":
      process.exitCode = await start(argv);
      return;
    case "delete":
      process.exitCode = deleteDead();
      return;
    case "serve":
      await serve(argv);
      return;
    default:
      process.stderr.write(`fake shim: unknown action ${JSON.stringify(action)}\n`);
      process.exitCode = 1;
  }
}

// run only as a program (the tests import the helpers above)
if (process.argv[1] && resolve(process.argv[1]) === FAKE_SHIM_JS) {
  main().catch((err) => {
    process.stderr.write(`fake shim: ${(err as Error).message}\n`);
    process.exit(1);
  });
}
