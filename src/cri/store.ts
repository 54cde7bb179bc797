// The CRI plugin's records of pod sandboxes and containers, and where they survive a restart:
//   - a container in the metadata store (namespace k8s.io, so `ctr -n k8s.io c ls` lists them),
//     labelled `io.cri-containerd.kind` = sandbox|container, with the CRI record (the kubelet's
//     config and what was decided when creating: netns, IPs, image, log path) as JSON in an
//     extension;
//   - a status file per object under the plugin's root dir for what changes afterwards (pid,
//     start/finish times, exit code, reason), rewritten atomically on each change.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fromJson, type JsonValue, toJson } from "@bufbuild/protobuf";
import { errNotFound } from "../base/errdefs.js";
import {
  type ContainerConfig,
  ContainerConfigSchema,
  type PodSandboxConfig,
  PodSandboxConfigSchema,
} from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { removeTree } from "../sys/remove-tree.js";

/** Nanoseconds since the Unix epoch, as the CRI carries times. */
export const nowNs = (): bigint => BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));

export type SandboxState = "ready" | "notready";

export interface SandboxStatus {
  state: SandboxState;
  pid: number;
  /** Set when the pause container exited or was stopped. */
  exitCode?: number;
  exitedAt?: string;
  /** CNI DEL ran and the netns is gone (stop does not repeat it). */
  networkDown?: boolean;
}

export interface SandboxRecord {
  id: string;
  /** The reserved name (`<name>_<namespace>_<uid>_<attempt>`). */
  name: string;
  config: PodSandboxConfig;
  runtimeHandler: string;
  runtimeType: string;
  /** "" with host networking. */
  netnsPath: string;
  ip: string;
  additionalIps: string[];
  /** The CNI result, for DEL and the verbose status. */
  cniResult?: unknown;
  image: string;
  imageId: string;
  createdAt: bigint;
  status: SandboxStatus;
  /** Containers of this pod, by id. */
  containers: Set<string>;
}

export type ContainerStateName = "created" | "running" | "exited" | "unknown";

export interface ContainerStatusRec {
  state: ContainerStateName;
  pid: number;
  createdAt: bigint;
  startedAt: bigint;
  finishedAt: bigint;
  exitCode: number;
  reason: string;
  message: string;
}

export interface ContainerRecord {
  id: string;
  name: string;
  sandboxId: string;
  config: ContainerConfig;
  /** The image as the kubelet named it, and the image's id (its config digest). */
  image: string;
  imageRef: string;
  logPath: string;
  stopSignal: string;
  status: ContainerStatusRec;
}

interface SandboxJson {
  id: string;
  name: string;
  config: JsonValue;
  runtimeHandler: string;
  runtimeType: string;
  netnsPath: string;
  ip: string;
  additionalIps: string[];
  cniResult?: unknown;
  image: string;
  imageId: string;
  createdAt: string;
}

interface ContainerJson {
  id: string;
  name: string;
  sandboxId: string;
  config: JsonValue;
  image: string;
  imageRef: string;
  logPath: string;
  stopSignal: string;
}

export const SANDBOX_METADATA_TYPE = "github.com/containerd/cri/pkg/store/sandbox/Metadata";
export const CONTAINER_METADATA_TYPE = "github.com/containerd/cri/pkg/store/container/Metadata";

export function encodeSandbox(s: SandboxRecord): Uint8Array {
  const j: SandboxJson = {
    id: s.id,
    name: s.name,
    config: toJson(PodSandboxConfigSchema, s.config),
    runtimeHandler: s.runtimeHandler,
    runtimeType: s.runtimeType,
    netnsPath: s.netnsPath,
    ip: s.ip,
    additionalIps: s.additionalIps,
    cniResult: s.cniResult,
    image: s.image,
    imageId: s.imageId,
    createdAt: String(s.createdAt),
  };
  return Buffer.from(JSON.stringify(j));
}

export function decodeSandbox(b: Uint8Array, status: SandboxStatus): SandboxRecord {
  const j = JSON.parse(Buffer.from(b).toString("utf8")) as SandboxJson;
  return {
    id: j.id,
    name: j.name,
    config: fromJson(PodSandboxConfigSchema, j.config, { ignoreUnknownFields: true }),
    runtimeHandler: j.runtimeHandler,
    runtimeType: j.runtimeType,
    netnsPath: j.netnsPath,
    ip: j.ip,
    additionalIps: j.additionalIps ?? [],
    cniResult: j.cniResult,
    image: j.image,
    imageId: j.imageId,
    createdAt: BigInt(j.createdAt),
    status,
    containers: new Set(),
  };
}

export function encodeContainer(c: ContainerRecord): Uint8Array {
  const j: ContainerJson = {
    id: c.id,
    name: c.name,
    sandboxId: c.sandboxId,
    config: toJson(ContainerConfigSchema, c.config),
    image: c.image,
    imageRef: c.imageRef,
    logPath: c.logPath,
    stopSignal: c.stopSignal,
  };
  return Buffer.from(JSON.stringify(j));
}

export function decodeContainer(b: Uint8Array, status: ContainerStatusRec): ContainerRecord {
  const j = JSON.parse(Buffer.from(b).toString("utf8")) as ContainerJson;
  return {
    id: j.id,
    name: j.name,
    sandboxId: j.sandboxId,
    config: fromJson(ContainerConfigSchema, j.config, { ignoreUnknownFields: true }),
    image: j.image,
    imageRef: j.imageRef,
    logPath: j.logPath,
    stopSignal: j.stopSignal,
    status,
  };
}

function writeAtomic(path: string, data: string): void {
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, data, { mode: 0o600 });
  renameSync(tmp, path);
}

function readJsonFile<T>(path: string): T | undefined {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as T;
  } catch {
    return undefined;
  }
}

/** Where the plugin keeps its per-object directories: `<root>/sandboxes/<id>`, `<root>/containers/<id>`. */
export class CriDirs {
  constructor(
    readonly root: string,
    readonly state: string,
  ) {}

  sandboxRoot(id: string): string {
    return join(this.root, "sandboxes", id);
  }
  sandboxState(id: string): string {
    return join(this.state, "sandboxes", id);
  }
  containerRoot(id: string): string {
    return join(this.root, "containers", id);
  }
  containerState(id: string): string {
    return join(this.state, "containers", id);
  }
  writeSandboxStatus(id: string, s: SandboxStatus): void {
    writeAtomic(join(this.sandboxRoot(id), "status"), JSON.stringify(s));
  }
  readSandboxStatus(id: string): SandboxStatus | undefined {
    return readJsonFile<SandboxStatus>(join(this.sandboxRoot(id), "status"));
  }

  writeContainerStatus(id: string, s: ContainerStatusRec): void {
    const j = {
      ...s,
      createdAt: String(s.createdAt),
      startedAt: String(s.startedAt),
      finishedAt: String(s.finishedAt),
    };
    writeAtomic(join(this.containerRoot(id), "status"), JSON.stringify(j));
  }
  readContainerStatus(id: string): ContainerStatusRec | undefined {
    const j = readJsonFile<Record<string, unknown>>(join(this.containerRoot(id), "status"));
    if (!j) return undefined;
    return {
      state: j.state as ContainerStateName,
      pid: Number(j.pid ?? 0),
      createdAt: BigInt(String(j.createdAt ?? "0")),
      startedAt: BigInt(String(j.startedAt ?? "0")),
      finishedAt: BigInt(String(j.finishedAt ?? "0")),
      exitCode: Number(j.exitCode ?? 0),
      reason: String(j.reason ?? ""),
      message: String(j.message ?? ""),
    };
  }

  // Made synchronously: under concurrent creations each promise-API call waits for a turn of the
  // busy event loop (~25 ms for these two at concurrency 8, well under 1 ms like this).
  makeSandboxDirs(id: string): void {
    mkdirSync(this.sandboxRoot(id), { recursive: true, mode: 0o755 });
    mkdirSync(this.sandboxState(id), { recursive: true, mode: 0o755 });
  }
  makeContainerDirs(id: string): void {
    mkdirSync(this.containerRoot(id), { recursive: true, mode: 0o755 });
    mkdirSync(this.containerState(id), { recursive: true, mode: 0o755 });
  }
  // Removed synchronously when small, as they were made (removeTree).
  async removeSandboxDirs(id: string): Promise<void> {
    await removeTree(this.sandboxRoot(id));
    await removeTree(this.sandboxState(id));
  }
  async removeContainerDirs(id: string): Promise<void> {
    await removeTree(this.containerRoot(id));
    await removeTree(this.containerState(id));
  }
}

/** The in-memory index of sandboxes and containers, with id-prefix lookup like containerd's. */
export class CriStore {
  readonly sandboxes = new Map<string, SandboxRecord>();
  readonly containers = new Map<string, ContainerRecord>();

  sandbox(idOrPrefix: string): SandboxRecord {
    const s = lookup(this.sandboxes, idOrPrefix);
    if (!s) throw errNotFound(`an error occurred when try to find sandbox ${JSON.stringify(idOrPrefix)}`);
    return s;
  }

  container(idOrPrefix: string): ContainerRecord {
    const c = lookup(this.containers, idOrPrefix);
    if (!c) throw errNotFound(`an error occurred when try to find container ${JSON.stringify(idOrPrefix)}`);
    return c;
  }

  findSandbox(idOrPrefix: string): SandboxRecord | undefined {
    return lookup(this.sandboxes, idOrPrefix);
  }

  findContainer(idOrPrefix: string): ContainerRecord | undefined {
    return lookup(this.containers, idOrPrefix);
  }
}

/** Exact id, else the one id starting with the prefix (an ambiguous prefix finds nothing). */
function lookup<T>(m: Map<string, T>, key: string): T | undefined {
  if (key === "") return undefined;
  const exact = m.get(key);
  if (exact) return exact;
  let found: T | undefined;
  for (const [id, v] of m) {
    if (!id.startsWith(key)) continue;
    if (found) return undefined;
    found = v;
  }
  return found;
}
