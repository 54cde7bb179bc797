// Starting containerd-shim-runc-v2 without its `start` command.
//
// `start` is a Go process of its own on every task create that needs a new shim. It derives the
// shim's socket from berthd's address, the namespace and the task's group, listens on it, writes
// the bundle's `address` file, starts the shim proper (the same binary with `-namespace NS -id ID
// -address A [-debug]`, cwd the bundle, GOMAXPROCS=4, a process group of its own) with the
// listening socket as its fd 3, moves it into the runtime options' shim cgroup, sets its
// oom_score_adj to its starter's + 1, prints the address and exits. On this machine that costs
// 25–40 ms of wall time per shim (`containerd-shim-runc-v2 -v` alone takes ~20 ms), on the
// critical path of `ctr run`, Tasks/Create and RunPodSandbox.
//
// berthd takes those steps itself for the runc v2 shim: the shim process that results is the one
// `start` would have started, with the same arguments, socket, files and scores. `start` still
// runs whenever a case is not covered here: another shim binary, a shim cgroup in the options,
// SCHED_CORE set (core scheduling), or a socket path already taken (a group whose shim berthd is
// not connected to, a stale socket: `start` knows whether to join or replace it).
import { createHash } from "node:crypto";
import { chmodSync, lstatSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { basename, join } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { OptionsSchema } from "../../gen/containerd/runc/v1/oci_pb.js";
import { spawnUntracked } from "../../sys/spawn.js";
import { closeFd, listenUnixFd } from "../../sys/unix-listen.js";
import type { Bundle } from "./bundle.js";
import { GROUPING_RUNTIME } from "./shim-group.js";

/** Where the runc v2 shim puts its sockets, whatever the daemon's state dir (containerd's default). */
export const SHIM_SOCKET_DIR = "/run/containerd/s";

const RUNC_SHIM = "containerd-shim-runc-v2";
const RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options";
const OOM_SCORE_ADJ_MAX = 1000;

/** The runc v2 shim's socket for a group: sha256 of `<daemon address>/<namespace>/<group>`. */
export function shimSocketAddress(daemonAddress: string, ns: string, group: string): string {
  const digest = createHash("sha256")
    .update(join(daemonAddress, ns, group))
    .digest("hex");
  return `unix://${SHIM_SOCKET_DIR}/${digest}`;
}

/** The runtime options' shim cgroup, when the options are runc's (which `start` reads). */
function shimCgroupOf(opts: { typeUrl: string; value: Uint8Array } | undefined): string {
  if (!opts || opts.value.length === 0) return "";
  const type = opts.typeUrl.slice(opts.typeUrl.lastIndexOf("/") + 1);
  if (type !== RUNC_OPTIONS_TYPE) return "";
  return fromBinary(OptionsSchema, opts.value).shimCgroup;
}

/** Whether berthd can start this shim itself instead of running its `start`. */
export function canLaunchDirectly(
  binary: string,
  runtime: string,
  opts: { typeUrl: string; value: Uint8Array } | undefined,
): boolean {
  if (runtime !== GROUPING_RUNTIME || basename(binary) !== RUNC_SHIM) return false;
  if (process.env.SCHED_CORE) return false;
  try {
    return shimCgroupOf(opts) === "";
  } catch {
    return false; // options `start` would reject: let it say so
  }
}

export interface LaunchEnv {
  /** berthd's gRPC socket (the shim's -address). */
  address: string;
  /** berthd's ttrpc socket (TTRPC_ADDRESS): where the shim publishes its events. */
  ttrpcAddress: string;
  debug: boolean;
}

/**
 * Start the runc v2 shim for a bundle as its `start` would: resolves with the shim's address and
 * PID (the caller reaps it), or undefined when the group's socket path is taken and `start` must
 * decide. On failure nothing is left: no socket, no shim.
 */
export async function launchShim(
  env: LaunchEnv,
  bundle: Bundle,
  binary: string,
  group: string,
): Promise<{ address: string; pid: number } | undefined> {
  const address = shimSocketAddress(env.address, bundle.namespace, group);
  const path = address.slice("unix://".length);
  mkdirSync(SHIM_SOCKET_DIR, { recursive: true, mode: 0o700 });
  let fd: number;
  try {
    fd = listenUnixFd(path, 4);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EADDRINUSE") return undefined;
    throw err;
  }
  let pid = 0;
  try {
    // the shim's socket is for root only, as `start` leaves it
    chmodSync(path, 0o600);
    // the shim reads the address back from here when it shuts down, to remove its socket
    writeFileSync(join(bundle.path, "address"), address, { mode: 0o600 });
    const args = ["-namespace", bundle.namespace, "-id", bundle.id, "-address", env.address];
    if (env.debug) args.push("-debug");
    pid = await spawnUntracked(binary, args, {
      cwd: bundle.path,
      env: { ...process.env, TTRPC_ADDRESS: env.ttrpcAddress, GOMAXPROCS: "4" },
      stdio: ["ignore", "ignore", "ignore"],
      extraFds: [fd],
      ownProcessGroup: true,
    });
    setShimOomScore(pid);
    return { address, pid };
  } catch (err) {
    if (pid > 0) {
      try {
        process.kill(pid, "SIGKILL"); // berthd's reaper collects it
      } catch {
        // already gone
      }
    }
    try {
      unlinkSync(path);
    } catch {
      // already gone
    }
    throw err;
  } finally {
    // the shim holds its own copy: once it exits, connecting fails instead of waiting
    closeFd(fd);
  }
}

/** The shim's oom_score_adj: berthd's + 1, so that the kernel picks a shim before berthd. */
function setShimOomScore(pid: number): void {
  const own = Number.parseInt(readFileSync("/proc/self/oom_score_adj", "utf8").trim(), 10) || 0;
  writeFileSync(`/proc/${pid}/oom_score_adj`, String(Math.min(own + 1, OOM_SCORE_ADJ_MAX)));
}

/**
 * After a shim died without its shutdown (killed, OOM): remove its socket, which it would have
 * removed itself, when nothing listens on it any more. containerd leaves these behind; here the
 * next task of that id or group can then be started directly instead of through `start`. Only
 * sockets under the runc v2 shim's directory are touched, and only the file that refused the
 * connection (a shim started meanwhile on the same path makes a new file).
 */
export async function removeDeadShimSocket(address: string): Promise<boolean> {
  if (!address.startsWith(`unix://${SHIM_SOCKET_DIR}/`)) return false;
  const path = address.slice("unix://".length);
  let ino: number;
  try {
    ino = lstatSync(path).ino;
  } catch {
    return false; // already gone
  }
  const refused = await new Promise<boolean>((resolve) => {
    const sock = connect(path);
    sock.setTimeout(1000);
    sock.once("connect", () => {
      sock.destroy();
      resolve(false);
    });
    sock.once("timeout", () => {
      sock.destroy();
      resolve(false);
    });
    sock.once("error", (err: NodeJS.ErrnoException) => resolve(err.code === "ECONNREFUSED"));
  });
  if (!refused) return false;
  try {
    if (lstatSync(path).ino !== ino) return false;
    unlinkSync(path);
    return true;
  } catch {
    return false;
  }
}
