// Pod sandboxes: RunPodSandbox (sandbox image, network namespace + CNI, the pod's files, the
// pause container), StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox and the
// pod stats calls. Stop and remove are idempotent, as the kubelet expects.
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { hostname as osHostname } from "node:os";
import { join } from "node:path";
import { BerthError, errInvalidArgument, isNotFound } from "../base/errdefs.js";
import type { SetupResult } from "../core/cni/manager.js";
import type { CapabilityArgs } from "../core/cni/types.js";
import {
  type DNSConfig,
  NamespaceMode,
  type PodSandbox,
  type PodSandboxConfig,
  PodSandboxSchema,
  PodSandboxState,
  Protocol,
} from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { MNT_DETACH, MS, mountSyscall, unmount } from "../sys/mount.js";
import { createNetns, netnsDirFor, netnsExists, removeNetns } from "../sys/netns.js";
import { KIND_LABEL, SANDBOX_METADATA_EXT } from "./annotations.js";
import { applyCgroupConfig } from "./container-spec.js";
import type { CriDeps, RuntimeMethods } from "./context.js";
import { EncodedItems } from "./encoded-list.js";
import { sandboxName, sandboxRequest } from "./naming.js";
import { locked, matchLabels } from "./records.js";
import { sandboxSpec } from "./sandbox-spec.js";
import {
  type CriState,
  criState,
  removeContainer,
  removeSnapshot,
  runtimeFor,
  specAny,
  stopContainer,
  taskOf,
  watchSandbox,
  writeSandboxStatus,
} from "./state.js";
import { podSandboxStats } from "./stats.js";
import { encodeSandbox, nowNs, SANDBOX_METADATA_TYPE, type SandboxRecord } from "./store.js";

const DEFAULT_SHM_SIZE = "size=65536k";

const newId = () => randomBytes(32).toString("hex");

const hostNetwork = (cfg: PodSandboxConfig) =>
  cfg.linux?.securityContext?.namespaceOptions?.network === NamespaceMode.NODE;
const hostIpc = (cfg: PodSandboxConfig) =>
  cfg.linux?.securityContext?.namespaceOptions?.ipc === NamespaceMode.NODE;

/** The pod's files, as its containers see them. */
export const sandboxFiles = (st: CriState, id: string) => ({
  hostname: join(st.dirs.sandboxRoot(id), "hostname"),
  hosts: join(st.dirs.sandboxRoot(id), "hosts"),
  resolv: join(st.dirs.sandboxRoot(id), "resolv.conf"),
  shm: join(st.dirs.sandboxState(id), "shm"),
});

export function shmPathFor(st: CriState, s: { id: string; config: PodSandboxConfig }): string {
  return hostIpc(s.config) ? "/dev/shm" : sandboxFiles(st, s.id).shm;
}

const DEFAULT_HOSTS = `127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
fe00::0	ip6-localnet
ff00::0	ip6-mcastprefix
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
`;

/** resolv.conf from the kubelet's DNSConfig; the host's when it gives none. */
export function resolvConf(dns: DNSConfig | undefined): string | undefined {
  if (!dns || (dns.servers.length === 0 && dns.searches.length === 0 && dns.options.length === 0))
    return undefined;
  let out = "";
  if (dns.searches.length > 0) out += `search ${dns.searches.join(" ")}\n`;
  for (const s of dns.servers) out += `nameserver ${s}\n`;
  if (dns.options.length > 0) out += `options ${dns.options.join(" ")}\n`;
  return out;
}

const readHostFile = (p: string, fallback: string) => {
  try {
    return readFileSync(p, "utf8");
  } catch {
    return fallback;
  }
};

/**
 * The pod's hostname, hosts and resolv.conf files and its /dev/shm. Synchronous: with eight pods
 * starting at once the event loop is busy, and the promise API's open, write and close each wait
 * for a turn of it (three files took ~100 ms that way at concurrency 8, ~3 ms like this).
 */
function writePodFiles(st: CriState, id: string, cfg: PodSandboxConfig): void {
  const f = sandboxFiles(st, id);
  const hostname = cfg.hostname || (hostNetwork(cfg) ? osHostname() : "");
  writeFileSync(f.hostname, `${hostname}\n`, { mode: 0o644 });
  writeFileSync(f.hosts, hostNetwork(cfg) ? readHostFile("/etc/hosts", DEFAULT_HOSTS) : DEFAULT_HOSTS, {
    mode: 0o644,
  });
  writeFileSync(f.resolv, resolvConf(cfg.dnsConfig) ?? readHostFile("/etc/resolv.conf", ""), {
    mode: 0o644,
  });
  if (!hostIpc(cfg)) {
    mkdirSync(f.shm, { recursive: true, mode: 0o700 });
    mountSyscall("shm", f.shm, "tmpfs", MS.NOSUID | MS.NODEV | MS.NOEXEC, `mode=1777,${DEFAULT_SHM_SIZE}`);
  }
}

function unmountShm(st: CriState, id: string): void {
  const shm = sandboxFiles(st, id).shm;
  if (!existsSync(shm)) return;
  for (let i = 0; i < 4; i++) {
    try {
      unmount(shm, MNT_DETACH);
    } catch {
      break;
    }
  }
}

const protocolName = (p: Protocol) => (p === Protocol.UDP ? "udp" : p === Protocol.SCTP ? "sctp" : "tcp");

function cniCapabilities(cfg: PodSandboxConfig): CapabilityArgs {
  const caps: CapabilityArgs = {
    portMappings: cfg.portMappings.map((m) => ({
      hostPort: m.hostPort,
      containerPort: m.containerPort,
      protocol: protocolName(m.protocol),
      ...(m.hostIp ? { hostIP: m.hostIp } : {}),
    })),
  };
  const dns = cfg.dnsConfig;
  if (dns && (dns.servers.length > 0 || dns.searches.length > 0 || dns.options.length > 0))
    caps.dns = { servers: dns.servers, searches: dns.searches, options: dns.options };
  return caps;
}

const podIdentity = (cfg: PodSandboxConfig) => ({
  namespace: cfg.metadata?.namespace ?? "",
  name: cfg.metadata?.name ?? "",
  uid: cfg.metadata?.uid ?? "",
});

const noop = () => {};

/** Undo steps of a half-made sandbox, run newest first. */
type Undo = () => Promise<void> | void;

async function runSandbox(
  st: CriState,
  id: string,
  name: string,
  cfg: PodSandboxConfig,
  handler: string,
): Promise<void> {
  const { deps } = st;
  const ns = deps.namespace;
  const undo: Undo[] = [];
  try {
    const runtime = runtimeFor(deps, handler);
    const image = await deps.criImages.ensure(deps.config.sandbox_image, { sandboxConfig: cfg });
    st.dirs.makeSandboxDirs(id);
    undo.push(() => st.dirs.removeSandboxDirs(id));

    // network: a namespace of its own and the CNI networks, unless the pod uses the host's. The
    // CNI ADDs (tens of ms of plugin processes) run while the pause container's shim and runc
    // create run: the container only needs the namespace to exist, and the network is complete
    // before its process starts.
    let netnsPath = "";
    let network: Promise<SetupResult> | undefined;
    let netnsReady: Promise<string> | undefined;
    if (!hostNetwork(cfg)) {
      const made = createNetns(netnsDirFor(deps.stateDir, deps.config.netns_mounts_under_state_dir));
      netnsReady = made;
      made.catch(noop);
      // a failed creation removes its own file: these undo steps only act on a made namespace
      const madeFile = () => made.catch(() => "");
      undo.push(async () => {
        const f = await madeFile();
        if (f) removeNetns(f);
      });
      undo.push(async () => {
        const f = await madeFile();
        if (f) await st.cni.teardown(id, f, podIdentity(cfg), cniCapabilities(cfg));
      });
      network = made.then((f) => st.cni.setup(id, f, podIdentity(cfg), cniCapabilities(cfg)));
      // awaited below, or settled before the undo steps run
      undo.push(() => network?.then(noop, noop));
      network.catch(noop);
    }

    writePodFiles(st, id, cfg);
    undo.push(() => unmountShm(st, id));
    if (netnsReady) netnsPath = await netnsReady;

    const spec = sandboxSpec(
      {
        id,
        namespace: ns,
        config: cfg,
        image: image.config,
        imageName: deps.config.sandbox_image,
        netnsPath,
        shmPath: shmPathFor(st, { id, config: cfg }),
        restrictOomScoreAdj: deps.config.restrict_oom_score_adj,
        enableUnprivilegedPorts: deps.config.enable_unprivileged_ports,
        enableUnprivilegedIcmp: deps.config.enable_unprivileged_icmp,
        podAnnotations: runtime.podAnnotations,
        readLocalProfile: (p) => JSON.parse(readFileSync(p, "utf8")),
      },
      st.ownOomScoreAdj,
    );

    applyCgroupConfig(spec, {
      disableCgroup: deps.config.disable_cgroup,
      disableHugetlb: deps.config.disable_hugetlb_controller,
      tolerateMissingHugetlb: deps.config.tolerate_missing_hugetlb_controller,
    });
    const snapshotter = deps.config.containerd.snapshotter;
    const sn = deps.snapshots.get(snapshotter);
    const mounts = await sn.prepare(ns, id, image.chainId);
    undo.push(() => removeSnapshot(st, id));

    // the container record right after the snapshot (it is what keeps the snapshot from the
    // collector); the pod's IPs go into its extension once the network is up
    const rec: SandboxRecord = {
      id,
      name,
      config: cfg,
      runtimeHandler: handler,
      runtimeType: runtime.type,
      netnsPath,
      ip: "",
      additionalIps: [],
      cniResult: undefined,
      image: deps.config.sandbox_image,
      imageId: image.id,
      createdAt: nowNs(),
      status: { state: "notready", pid: 0 },
      containers: new Set(),
    };
    const sandboxExtension = () => ({
      [SANDBOX_METADATA_EXT]: { typeUrl: SANDBOX_METADATA_TYPE, value: encodeSandbox(rec) },
    });
    const record = deps.containers.create(ns, {
      id,
      labels: { ...cfg.labels, [KIND_LABEL]: "sandbox" },
      image: deps.config.sandbox_image,
      runtime: { name: runtime.type, options: runtime.options },
      spec: specAny(spec),
      snapshotter,
      snapshotKey: id,
      extensions: sandboxExtension(),
    });
    undo.push(() => {
      try {
        deps.containers.delete(ns, id);
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    });

    const task = await deps.taskManager.create(ns, id, {
      spec,
      runtime: runtime.type,
      runtimeOptions: runtime.options,
      rootfs: mounts,
    });
    undo.push(async () => {
      await task.kill(9, { all: true }).catch(() => {});
      await task.wait().catch(() => {});
      await task.delete().catch(() => {});
    });
    if (network) {
      const r = await network;
      rec.ip = r.ip;
      rec.additionalIps = r.additionalIps;
      rec.cniResult = r.networks.map((n) => ({ name: n.name, ifName: n.ifName, result: n.result }));
      deps.containers.update(ns, { ...record, extensions: sandboxExtension() }, [
        `extensions.${SANDBOX_METADATA_EXT}`,
      ]);
    }
    const pid = await task.start();
    rec.status = { state: "ready", pid };
    writeSandboxStatus(st, rec);
    st.store.sandboxes.set(id, rec);
    watchSandbox(st, rec, task);
  } catch (err) {
    for (const u of undo.reverse()) {
      try {
        await u();
      } catch (e) {
        deps.log.warn("CRI: cleanup after failed RunPodSandbox", { id, error: String(e) });
      }
    }
    throw err;
  }
}

/** Stop a pod: its containers, the pause container, its network; idempotent. */
export async function stopSandbox(st: CriState, s: SandboxRecord): Promise<void> {
  for (const cid of [...s.containers]) {
    const c = st.store.findContainer(cid);
    if (c) await stopContainer(st, c, 0);
  }
  const task = taskOf(st, s.id);
  let deleted: Promise<unknown> = Promise.resolve();
  if (task) {
    await task.kill(9, { all: true }).catch((err) => {
      if (!isNotFound(err) && !String(err).includes("process already finished")) throw err;
    });
    await (st.exits.get(s.id) ?? task.wait().catch(() => {}));
    // The pause process is gone: deleting its task (runc delete, the shim's shutdown and exit)
    // and the network's teardown are independent, so they run at once. Both are done before
    // StopPodSandbox answers.
    deleted = task.delete().catch((err) => {
      if (!isNotFound(err)) throw err;
    });
  }
  const network = (async () => {
    // Written only when it changes: the pause container's exit watcher has written notready
    // already, and RemovePodSandbox stops the pod again. (A restart finds a pod whose status says
    // ready without a task and marks it notready itself.)
    if (s.status.state !== "notready") {
      s.status = { state: "notready", pid: 0, exitCode: 137, exitedAt: String(nowNs()) };
      writeSandboxStatus(st, s);
    }
    if (s.netnsPath && !s.status.networkDown) {
      // CNI DEL also when the namespace is already gone: the plugins free what they hold outside it
      await st.cni.teardown(s.id, s.netnsPath, podIdentity(s.config), cniCapabilities(s.config));
      if (netnsExists(s.netnsPath) || existsSync(s.netnsPath)) removeNetns(s.netnsPath);
      s.status.networkDown = true;
      writeSandboxStatus(st, s);
    }
  })();
  const [d, n] = await Promise.allSettled([deleted, network]);
  if (d.status === "rejected") throw d.reason;
  if (n.status === "rejected") throw n.reason;
  unmountShm(st, s.id);
}

async function removeSandbox(st: CriState, s: SandboxRecord): Promise<void> {
  const { deps } = st;
  await stopSandbox(st, s);
  for (const cid of [...s.containers]) {
    const c = st.store.findContainer(cid);
    if (c) await removeContainer(st, c);
  }
  try {
    deps.containers.delete(deps.namespace, s.id);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  await removeSnapshot(st, s.id);
  await st.dirs.removeSandboxDirs(s.id);
  st.store.sandboxes.delete(s.id);
  st.sandboxNames.release(s.name);
}

const criState_ = (s: SandboxRecord) =>
  s.status.state === "ready" ? PodSandboxState.SANDBOX_READY : PodSandboxState.SANDBOX_NOTREADY;

/** ListPodSandbox's items, each encoded once per state. */
const sandboxItems = new EncodedItems(
  PodSandboxSchema,
  (s: SandboxRecord) => podSandboxOf(s),
  (s) => String(criState_(s)),
);

function podSandboxOf(s: SandboxRecord): PodSandbox {
  return {
    $typeName: "runtime.v1.PodSandbox",
    id: s.id,
    metadata: s.config.metadata,
    state: criState_(s),
    createdAt: s.createdAt,
    labels: s.config.labels,
    annotations: s.config.annotations,
    runtimeHandler: s.runtimeHandler,
  };
}

export function podSandboxMethods(deps: CriDeps): RuntimeMethods {
  const st = criState(deps);
  return {
    async runPodSandbox(req) {
      await st.ready;
      const cfg = req.config;
      const meta = cfg?.metadata;
      if (!cfg || !meta) throw errInvalidArgument("sandbox config must include metadata");
      if (!meta.name || !meta.namespace || !meta.uid)
        throw errInvalidArgument("sandbox metadata must include name, namespace and uid");
      const name = sandboxName(meta);
      // the attempt is not tied to this call (no abort signal): when the caller gives up, the
      // kubelet's retry takes its result
      const id = await st.sandboxNames.create(name, newId(), sandboxRequest(cfg, req.runtimeHandler), (id) =>
        runSandbox(st, id, name, cfg, req.runtimeHandler),
      );
      return { podSandboxId: id };
    },

    async stopPodSandbox(req) {
      await st.ready;
      const s = st.store.sandbox(req.podSandboxId);
      await locked(s, () => stopSandbox(st, s));
      return {};
    },

    async removePodSandbox(req) {
      await st.ready;
      const s = st.store.findSandbox(req.podSandboxId);
      if (!s) return {};
      await locked(s, () => removeSandbox(st, s));
      return {};
    },

    async podSandboxStatus(req) {
      await st.ready;
      const s = st.store.sandbox(req.podSandboxId);
      const nsOpts = s.config.linux?.securityContext?.namespaceOptions;
      const info: Record<string, string> = {};
      if (req.verbose) {
        info.info = JSON.stringify({
          pid: s.status.pid,
          processStatus: s.status.state === "ready" ? "running" : "stopped",
          netNamespaceClosed: s.netnsPath ? !netnsExists(s.netnsPath) : false,
          image: s.image,
          snapshotKey: s.id,
          snapshotter: deps.config.containerd.snapshotter,
          runtimeHandler: s.runtimeHandler,
          runtimeType: s.runtimeType,
          netnsPath: s.netnsPath,
          cniResult: s.cniResult,
          config: s.config.metadata,
        });
      }
      return {
        status: {
          id: s.id,
          metadata: s.config.metadata,
          state: criState_(s),
          createdAt: s.createdAt,
          network: {
            ip: s.ip,
            additionalIps: s.additionalIps.map((ip) => ({ ip })),
          },
          linux: {
            namespaces: {
              options: {
                network: nsOpts?.network ?? NamespaceMode.POD,
                pid: nsOpts?.pid ?? NamespaceMode.POD,
                ipc: nsOpts?.ipc ?? NamespaceMode.POD,
                targetId: nsOpts?.targetId ?? "",
              },
            },
          },
          labels: s.config.labels,
          annotations: s.config.annotations,
          runtimeHandler: s.runtimeHandler,
        },
        info,
      };
    },

    async listPodSandbox(req) {
      await st.ready;
      const f = req.filter;
      const items: SandboxRecord[] = [];
      for (const s of st.store.sandboxes.values()) {
        if (f?.id && !s.id.startsWith(f.id)) continue;
        if (f?.state && criState_(s) !== f.state.state) continue;
        if (f && !matchLabels(s.config.labels, f.labelSelector)) continue;
        items.push(s);
      }
      return sandboxItems.response(items);
    },

    async podSandboxStats(req) {
      await st.ready;
      const s = st.store.sandbox(req.podSandboxId);
      return { stats: await podSandboxStats(st, s) };
    },

    async listPodSandboxStats(req) {
      await st.ready;
      const f = req.filter;
      const stats = [];
      for (const s of st.store.sandboxes.values()) {
        if (s.status.state !== "ready") continue;
        if (f?.id && !s.id.startsWith(f.id)) continue;
        if (f && !matchLabels(s.config.labels, f.labelSelector)) continue;
        try {
          stats.push(await podSandboxStats(st, s));
        } catch (err) {
          if (!(err instanceof BerthError)) throw err;
        }
      }
      return { stats };
    },
  };
}
