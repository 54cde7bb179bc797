// What every part of the CRI service receives: the plugin's effective config, the daemon's stores
// and task manager, the CRI plugin's own directories, and the image helpers the image service
// provides (sandbox and container creation need the same pull and lookup a kubelet gets).
//
// Every object CRI creates lives in one containerd namespace, `k8s.io`, so `ctr -n k8s.io` sees
// what the kubelet made.
import type { Logger } from "../base/log.js";
import type { ContainerStore } from "../core/containers/store.js";
import type { MetadataContentStore } from "../core/content/metadata.js";
import type { DiffService } from "../core/diff/service.js";
import type { Exchange } from "../core/events/exchange.js";
import type { ImageConfig } from "../core/images/media.js";
import type { Descriptor, ImageStore } from "../core/images/store.js";
import type { LeaseStore } from "../core/leases/store.js";
import type { TaskManager } from "../core/runtime/manager.js";
import type { SnapshotService } from "../core/snapshots/metadata.js";
import type { Tasks } from "../gen/containerd/services/tasks/v1/tasks_pb.js";
import type {
  AuthConfig,
  ImageService,
  PodSandboxConfig,
  RuntimeService,
} from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { CallContext, NAMESPACE_HEADER, type ServiceImpl } from "../grpc/service.js";
import type { CriConfig } from "./config.js";

export type { CriConfig } from "./config.js";

/** The containerd namespace of everything CRI creates. */
export const CRI_NAMESPACE = "k8s.io";

/** An image as CRI sees it: one image, however many records (tag, repo digest, id) name it. */
export interface CriImage {
  /** `sha256:<config digest>`: the image ID kubelet and crictl show. */
  id: string;
  /** `name:tag` references naming it (normalised, e.g. `docker.io/library/busybox:1.36`). */
  repoTags: string[];
  /** `name@sha256:<manifest or index digest>` references naming it. */
  repoDigests: string[];
  /** The target of its records (an index or manifest). */
  target: Descriptor;
  /** The manifest chosen for this host's platform. */
  manifest: Descriptor;
  /** The parsed image config (entrypoint, env, user, volumes, stop signal, …). */
  config: ImageConfig;
  /** The rootfs's snapshot name in the configured snapshotter: the top chain ID ("" when no layers). */
  chainId: string;
  /** Bytes: the manifest's layers plus the config. */
  size: number;
  /** Whether the rootfs is unpacked in `containerd.snapshotter`. */
  unpacked: boolean;
  /** The names of every image record of it (tags, repo digests, the ID). */
  records: string[];
}

export interface PullOptions {
  auth?: AuthConfig;
  /** The pod the image is for (containerd reads its runtime handler for snapshotter choice). */
  sandboxConfig?: PodSandboxConfig;
  signal?: AbortSignal;
}

/** The image lookups and pulls the image service implements, shared with the pod/container parts. */
export interface CriImages {
  /**
   * The local image a reference names: an image ID (`sha256:…`, or a unique prefix of its hex),
   * a tag (normalised: `busybox` → `docker.io/library/busybox:latest`) or a repo digest.
   * undefined when no such image is stored.
   */
  resolve(ref: string): Promise<CriImage | undefined>;
  /** Pull and unpack into `containerd.snapshotter`, recording every CRI image record. */
  pull(ref: string, opts?: PullOptions): Promise<CriImage>;
  /** resolve(), else pull() (RunPodSandbox's sandbox_image; never re-pulls a present image). */
  ensure(ref: string, opts?: PullOptions): Promise<CriImage>;
  /** Every image of the namespace, by ID. */
  list(): Promise<CriImage[]>;
  /** Delete every record of an image (its content and snapshots go with the next collection). */
  remove(img: CriImage): Promise<void>;
}

/** Implementations of some RuntimeService methods; service.ts fills the gaps with Unimplemented. */
export type RuntimeMethods = Partial<ServiceImpl<typeof RuntimeService>>;
export type ImageMethods = Partial<ServiceImpl<typeof ImageService>>;

export interface CriDeps {
  /** The effective `[plugins."io.containerd.grpc.v1.cri"]` section (defaults merged). */
  config: CriConfig;
  /** Always CRI_NAMESPACE; here so callers need not import it. */
  namespace: typeof CRI_NAMESPACE;
  /** `<root>/io.containerd.grpc.v1.cri`: persistent CRI data (containerd keeps sandboxes/ here). */
  rootDir: string;
  /** `<state>/io.containerd.grpc.v1.cri`: runtime state (netns under state when configured, fifos, shm). */
  stateDir: string;
  /** The daemon: its root/state dirs, socket addresses and version. */
  daemon: { root: string; state: string; address: string; ttrpcAddress: string; version: string };

  containers: ContainerStore;
  images: ImageStore;
  content: MetadataContentStore;
  /** Every snapshotter by name; CRI uses `config.containerd.snapshotter`. */
  snapshots: SnapshotService;
  leases: LeaseStore;
  diff: DiffService;
  /** The shim manager (tasks by namespace/id). */
  taskManager: TaskManager;
  /**
   * The Tasks service as a client calls it (create with rootfs mounts, start, kill, wait, exec,
   * delete, metrics): call with `criCall()` as the context.
   */
  tasks: ServiceImpl<typeof Tasks>;
  events: Exchange;
  log: Logger;
  criImages: CriImages;
  /** The pod CIDR last given by UpdateRuntimeConfig ("" before). */
  podCIDR(): string;
  /** Register work to run at daemon shutdown (background loops, open log files). */
  onClose(fn: () => void | Promise<void>): void;
}

/** The per-call context for calling a daemon service (deps.tasks) in the CRI namespace. */
export function criCall(signal?: AbortSignal): CallContext {
  const ctx = new CallContext({ [NAMESPACE_HEADER]: CRI_NAMESPACE });
  if (signal) {
    if (signal.aborted) ctx.abort(signal.reason);
    else signal.addEventListener("abort", () => ctx.abort(signal.reason), { once: true });
  }
  return ctx;
}
