// Issue 10 items 4, 6-10: pod sandboxes and containers through the CRI RuntimeService on a real
// berthd, with images from a local registry (a busybox pause image built here, since the default
// sandbox_image is unreachable) and real CNI (bridge + host-local + portmap + loopback on the
// test's own bridge and 10.89.X.0/24 subnet). The flow a kubelet drives: runp → create → start →
// exec sync → logs → stats → stop → rm → stopp → rmp, plus exit reasons, retried creation and
// recovery after kill -9.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import net from "node:net";
import { hostname } from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import {
  ContainerState,
  NamespaceMode,
  PodSandboxState,
  Protocol,
  SecurityProfile_ProfileType,
} from "../../src/gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { type CriClient, criClient } from "../helpers/cri.js";
import { ctr, ok } from "../helpers/ctr.js";
import { type Daemon, restartDaemon, startBerthd } from "../helpers/daemons.js";
import { buildBusyboxImage, busyboxImageWith, pushImage } from "../helpers/images.js";
import { freeSubnetOctets, writeBridgeConflist } from "../helpers/net.js";
import { shimsOf, until } from "../helpers/procs.js";
import { freePort, type Registry, startRegistry } from "../helpers/registry.js";
import { makeTempDir, mountsUnder, removeTempDir } from "../helpers/tmp.js";

const execFileP = promisify(execFile);
const BB = "/bin/busybox";

function ipamReservations(dir: string): string[] {
  const out: string[] = [];
  if (!existsSync(dir)) return out;
  for (const n of readdirSync(dir))
    for (const f of readdirSync(path.join(dir, n))) if (/^\d+\.\d+\.\d+\.\d+$/.test(f)) out.push(f);
  return out;
}

const logLines = (p: string) =>
  readFileSync(p, "utf8")
    .split("\n")
    .filter((l) => l !== "");

describe("CRI pod sandboxes and containers", { timeout: 600_000 }, () => {
  let tmp: string;
  let reg: Registry;
  let d: Daemon;
  let cri: CriClient;
  let subnet: number;
  let ipamDir: string;
  let netnsDir: string;
  let busyboxRef: string;
  let bridge: string;
  let config: string;

  before(async () => {
    tmp = await makeTempDir("cri-pods");
    reg = await startRegistry();
    await pushImage(reg.url, "test/busybox", "1", buildBusyboxImage());
    await pushImage(
      reg.url,
      "test/pause",
      "1",
      busyboxImageWith({
        Entrypoint: [BB, "sleep", "1000000"],
        StopSignal: "SIGKILL",
        Volumes: { "/data": {} },
      }),
    );
    busyboxRef = `${reg.host}/test/busybox:1`;
    subnet = freeSubnetOctets("10.89")[0]!;
    bridge = `bcri${randomBytes(3).toString("hex")}`;
    ipamDir = path.join(tmp, "ipam");
    netnsDir = path.join(tmp, "state", "io.containerd.grpc.v1.cri", "netns");
    const confDir = path.join(tmp, "net.d");
    await mkdir(confDir, { recursive: true });
    // a bridge plugin that takes its time adding pods named slow-*: a kubelet whose
    // RunPodSandbox times out retries while that attempt is still in CNI ADD
    const wrapDir = path.join(tmp, "cni-wrap");
    await mkdir(wrapDir, { recursive: true });
    writeFileSync(
      path.join(wrapDir, "bridge"),
      [
        "#!/bin/sh",
        'case "$CNI_ARGS" in *K8S_POD_NAME=slow-*) [ "$CNI_COMMAND" = ADD ] && sleep 2 ;; esac',
        'exec /usr/lib/cni/bridge "$@"',
        "",
      ].join("\n"),
      { mode: 0o755 },
    );
    writeBridgeConflist({
      confDir,
      file: "10-test.conflist",
      name: "crit",
      bridge,
      subnet: `10.89.${subnet}.0/24`,
      ipamDir,
      defaultRoute: true,
      portmap: true,
    });
    config = [
      "version = 2",
      '[plugins."io.containerd.grpc.v1.cri"]',
      `  sandbox_image = "${reg.host}/test/pause:1"`,
      "  restrict_oom_score_adj = true",
      "  netns_mounts_under_state_dir = true",
      "  max_container_log_line_size = 64",
      '[plugins."io.containerd.grpc.v1.cri".cni]',
      `  bin_dir = "${wrapDir}:/usr/lib/cni"`,
      `  conf_dir = "${confDir}"`,
      `[plugins."io.containerd.grpc.v1.cri".registry.mirrors."${reg.host}"]`,
      `  endpoint = ["http://${reg.host}"]`,
    ].join("\n");
    d = await startBerthd({ config, root: path.join(tmp, "root"), state: path.join(tmp, "state") });
    cri = criClient(d.address);
    await cri.image.pullImage({ image: { image: busyboxRef } });
  });

  after(async () => {
    // pods a failed test left: CNI DEL frees their addresses and portmap rules
    try {
      for (const p of (await cri.runtime.listPodSandbox({})).items)
        await cri.runtime.removePodSandbox({ podSandboxId: p.id }).catch(() => {});
    } catch {
      // the daemon is gone: its cleanup below does what it can
    }
    cri?.close();
    await d?.cleanup();
    await reg?.cleanup();
    await execFileP("ip", ["link", "del", bridge]).catch(() => {});
    if (tmp) await removeTempDir(tmp);
  });

  let podN = 0;
  const podConfig = (extra: Record<string, unknown> = {}) => {
    const n = ++podN;
    return {
      metadata: {
        name: `pod${n}`,
        namespace: "default",
        uid: `uid-${n}-${randomBytes(3).toString("hex")}`,
        attempt: 0,
      },
      hostname: `pod${n}`,
      logDirectory: path.join(tmp, "logs", `pod${n}`),
      labels: { app: "cri-test", n: String(n) },
      annotations: { "test/anno": "yes" },
      linux: {},
      ...extra,
    };
  };
  const containerConfig = (name: string, command: string[], extra: Record<string, unknown> = {}) => ({
    metadata: { name, attempt: 0 },
    image: { image: busyboxRef },
    command,
    logPath: `${name}.log`,
    labels: { c: name },
    // what a kubelet sends for a pod without shareProcessNamespace
    linux: { securityContext: { namespaceOptions: { pid: NamespaceMode.CONTAINER } } },
    ...extra,
  });
  const sh = (script: string) => [BB, "sh", "-c", script];

  async function waitState(id: string, want: ContainerState) {
    let last: ContainerState | undefined;
    await until(
      `container ${id} in state ${want}`,
      () => {
        void cri.runtime.containerStatus({ containerId: id }).then((r) => {
          last = r.status?.state;
        });
        return last === want;
      },
      20_000,
    );
  }

  it("runs a pod through runp, create, start, exec, logs, stats, stop, rm, stopp, rmp", async () => {
    const hostPort = await freePort();
    const cfg = podConfig({
      dnsConfig: { servers: ["10.0.0.10"], searches: ["svc.cluster.local"], options: ["ndots:5"] },
      portMappings: [{ protocol: Protocol.TCP, containerPort: 8080, hostPort }],
    });
    const { podSandboxId: pod } = await cri.runtime.runPodSandbox({ config: cfg });
    assert.match(pod, /^[0-9a-f]{64}$/);

    const ps = await cri.runtime.podSandboxStatus({ podSandboxId: pod, verbose: true });
    assert.equal(ps.status?.state, PodSandboxState.SANDBOX_READY);
    const ip = ps.status?.network?.ip ?? "";
    assert.match(ip, new RegExp(`^10\\.89\\.${subnet}\\.\\d+$`));
    assert.equal(ps.status?.labels.app, "cri-test");
    assert.equal(ps.status?.annotations["test/anno"], "yes");
    const info = JSON.parse(ps.info.info ?? "{}") as { netnsPath: string; pid: number };
    assert.ok(info.netnsPath.startsWith(netnsDir), info.netnsPath);
    assert.ok(info.pid > 0);

    const ccfg = containerConfig(
      "web",
      sh(
        "echo hello; echo oops >&2; echo 0123456789012345678901234567890123456789012345678901234567890123456789ABCDEF; mkdir -p /www; echo served > /www/index.html; exec /bin/busybox httpd -f -p 8080 -h /www",
      ),
    );
    const { containerId: cid } = await cri.runtime.createContainer({
      podSandboxId: pod,
      config: ccfg,
      sandboxConfig: cfg,
    });
    let cs = await cri.runtime.containerStatus({ containerId: cid });
    assert.equal(cs.status?.state, ContainerState.CONTAINER_CREATED);
    await cri.runtime.startContainer({ containerId: cid });
    cs = await cri.runtime.containerStatus({ containerId: cid });
    assert.equal(cs.status?.state, ContainerState.CONTAINER_RUNNING);
    assert.ok((cs.status?.startedAt ?? 0n) > 0n);
    assert.equal(cs.status?.logPath, path.join(cfg.logDirectory, "web.log"));
    assert.match(cs.status?.imageRef ?? "", /^sha256:[0-9a-f]{64}$/);

    // exec sync: the pod's files, exit codes, stderr
    const host = await cri.runtime.execSync({
      containerId: cid,
      cmd: [BB, "cat", "/etc/hostname"],
      timeout: 10n,
    });
    assert.equal(Buffer.from(host.stdout).toString(), "pod1\n");
    assert.equal(host.exitCode, 0);
    const resolv = await cri.runtime.execSync({ containerId: cid, cmd: [BB, "cat", "/etc/resolv.conf"] });
    assert.equal(
      Buffer.from(resolv.stdout).toString(),
      "search svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n",
    );
    const fail = await cri.runtime.execSync({ containerId: cid, cmd: sh("echo to-err >&2; exit 3") });
    assert.equal(fail.exitCode, 3);
    assert.equal(Buffer.from(fail.stderr).toString(), "to-err\n");
    // a timed-out exec is killed and reported as such
    await assert.rejects(
      cri.runtime.execSync({ containerId: cid, cmd: [BB, "sleep", "30"], timeout: 1n }),
      /timeout 1s exceeded/,
    );

    // the pod's address answers from the host, and so does its hostPort on 127.0.0.1
    const get = (port: number, addr: string) =>
      new Promise<string>((resolve, reject) => {
        const s = net.connect(port, addr, () => s.end("GET /index.html HTTP/1.0\r\n\r\n"));
        let out = "";
        s.on("data", (b) => {
          out += b.toString();
        });
        s.on("end", () => resolve(out));
        s.on("error", reject);
        s.setTimeout(5000, () => s.destroy(new Error("timeout")));
      });
    assert.match(await get(8080, ip), /served/);
    assert.match(await get(hostPort, "127.0.0.1"), /served/);

    // logs in the CRI format, long lines cut at max_container_log_line_size (64)
    const logPath = path.join(cfg.logDirectory, "web.log");
    await until("log lines", () => existsSync(logPath) && logLines(logPath).length >= 4);
    const lines = logLines(logPath);
    const rx = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z) (stdout|stderr) ([PF]) (.*)$/;
    for (const l of lines) assert.match(l, rx);
    const parsed = lines.map((l) => rx.exec(l)!.slice(3));
    assert.deepEqual(
      parsed.filter((p) => p[0] === "stdout"),
      [
        ["stdout", "F", "hello"],
        ["stdout", "P", "0123456789012345678901234567890123456789012345678901234567890123"],
        ["stdout", "F", "456789ABCDEF"],
      ],
    );
    assert.deepEqual(
      parsed.filter((p) => p[0] === "stderr"),
      [["stderr", "F", "oops"]],
    );

    // ReopenContainerLog after a rotation writes into a fresh file
    const rotated = `${logPath}.1`;
    await execFileP("mv", [logPath, rotated]);
    await cri.runtime.reopenContainerLog({ containerId: cid });
    await cri.runtime.execSync({ containerId: cid, cmd: sh("echo after-rotate > /proc/1/fd/1") });
    await until(
      "rotated log",
      () => existsSync(logPath) && readFileSync(logPath, "utf8").includes("after-rotate"),
    );

    // listing, stats, one shim for the pod, ctr sees both
    const list = await cri.runtime.listContainers({ filter: { podSandboxId: pod } });
    assert.deepEqual(
      list.containers.map((c) => c.id),
      [cid],
    );
    const pods = await cri.runtime.listPodSandbox({ filter: { labelSelector: { n: cfg.labels.n } } });
    assert.deepEqual(
      pods.items.map((p) => p.id),
      [pod],
    );
    const stats = await cri.runtime.containerStats({ containerId: cid });
    assert.equal(stats.stats?.attributes?.id, cid);
    assert.ok((stats.stats?.writableLayer?.usedBytes?.value ?? 0n) > 0n, "writable layer usage");
    const lstats = await cri.runtime.listContainerStats({ filter: { podSandboxId: pod } });
    assert.deepEqual(
      lstats.stats.map((x) => x.attributes?.id),
      [cid],
    );
    const pstats = await cri.runtime.podSandboxStats({ podSandboxId: pod });
    assert.equal(pstats.stats?.attributes?.id, pod);
    assert.deepEqual(
      pstats.stats?.linux?.containers.map((x) => x.attributes?.id),
      [cid],
    );
    assert.ok((pstats.stats?.linux?.memory?.workingSetBytes?.value ?? 0n) > 0n, "pod working set");

    // UpdateContainerResources reaches the running container's cgroup
    const mib64 = 64n * 1024n * 1024n;
    await cri.runtime.updateContainerResources({
      containerId: cid,
      linux: { memoryLimitInBytes: mib64, cpuShares: 512n },
    });
    assert.equal(
      readFileSync(`/sys/fs/cgroup/memory/k8s.io/${cid}/memory.limit_in_bytes`, "utf8").trim(),
      String(mib64),
    );
    assert.equal(readFileSync(`/sys/fs/cgroup/cpu/k8s.io/${cid}/cpu.shares`, "utf8").trim(), "512");

    assert.equal(shimsOf(d.address).length, 1, "one shim for the pod");
    const bundleOf = (id: string) => path.join(tmp, "state", "io.containerd.runtime.v2.task", "k8s.io", id);
    assert.equal(
      readFileSync(path.join(bundleOf(cid), "address"), "utf8"),
      readFileSync(path.join(bundleOf(pod), "address"), "utf8"),
      "the container's bundle names the pod's shim",
    );
    // berthd opens a bundle's shim log FIFO only when it runs the shim's start: the container
    // joined the running shim without it
    assert.equal(existsSync(path.join(bundleOf(pod), "log")), true);
    assert.equal(existsSync(path.join(bundleOf(cid), "log")), false, "no shim start for the container");
    const cls = ok(await ctr(d.address, ["-n", "k8s.io", "containers", "ls", "-q"]));
    assert.deepEqual(cls.trim().split("\n").sort(), [cid, pod].sort());

    // stop: the stop signal is ignored by PID 1 → SIGKILL after the timeout
    await cri.runtime.stopContainer({ containerId: cid, timeout: 1n });
    cs = await cri.runtime.containerStatus({ containerId: cid });
    assert.equal(cs.status?.state, ContainerState.CONTAINER_EXITED);
    assert.equal(cs.status?.exitCode, 137);
    assert.equal(cs.status?.reason, "Error");
    assert.ok((cs.status?.finishedAt ?? 0n) >= (cs.status?.startedAt ?? 0n));
    await cri.runtime.stopContainer({ containerId: cid, timeout: 1n });

    await cri.runtime.removeContainer({ containerId: cid });
    await cri.runtime.removeContainer({ containerId: cid });
    await assert.rejects(cri.runtime.containerStatus({ containerId: cid }), /not found/);

    await cri.runtime.stopPodSandbox({ podSandboxId: pod });
    await cri.runtime.stopPodSandbox({ podSandboxId: pod });
    const stopped = await cri.runtime.podSandboxStatus({ podSandboxId: pod });
    assert.equal(stopped.status?.state, PodSandboxState.SANDBOX_NOTREADY);
    assert.ok(!existsSync(info.netnsPath), "netns removed at stop");
    assert.deepEqual(ipamReservations(ipamDir), [], "address released at stop");
    await cri.runtime.removePodSandbox({ podSandboxId: pod });
    await cri.runtime.removePodSandbox({ podSandboxId: pod });
    assert.deepEqual((await cri.runtime.listPodSandbox({})).items, []);
    assert.equal(ok(await ctr(d.address, ["-n", "k8s.io", "containers", "ls", "-q"])).trim(), "");
    await until("shim gone", () => shimsOf(d.address).length === 0);
    assert.deepEqual(
      mountsUnder(path.join(tmp, "state")).filter((m) => !m.endsWith("/netns")),
      [],
    );
  });

  it("reports Completed and Error exits with their codes", async () => {
    const cfg = podConfig();
    const { podSandboxId: pod } = await cri.runtime.runPodSandbox({ config: cfg });
    const ids: string[] = [];
    for (const [name, code] of [
      ["ok", 0],
      ["bad", 7],
    ] as const) {
      const { containerId } = await cri.runtime.createContainer({
        podSandboxId: pod,
        config: containerConfig(name, sh(`echo bye; exit ${code}`)),
        sandboxConfig: cfg,
      });
      await cri.runtime.startContainer({ containerId });
      ids.push(containerId);
    }
    // an image's declared volume is mounted (the pause image declares /data)
    const vol = await cri.runtime.createContainer({
      podSandboxId: pod,
      config: containerConfig("vol", sh("/bin/busybox grep -q ' /data ' /proc/mounts && touch /data/x"), {
        image: { image: `${reg.host}/test/pause:1` },
      }),
      sandboxConfig: cfg,
    });
    await cri.runtime.startContainer({ containerId: vol.containerId });
    ids.push(vol.containerId);
    for (const id of ids) await waitState(id, ContainerState.CONTAINER_EXITED);
    const volS = await cri.runtime.containerStatus({ containerId: vol.containerId });
    assert.equal(volS.status?.reason, "Completed", "image volume mounted");
    const [okS, badS] = await Promise.all(
      ids.slice(0, 2).map((id) => cri.runtime.containerStatus({ containerId: id })),
    );
    assert.equal(okS.status?.reason, "Completed");
    assert.equal(okS.status?.exitCode, 0);
    assert.equal(badS.status?.reason, "Error");
    assert.equal(badS.status?.exitCode, 7);
    const exited = await cri.runtime.listContainers({
      filter: { podSandboxId: pod, state: { state: ContainerState.CONTAINER_EXITED } },
    });
    assert.equal(exited.containers.length, 3);
    assert.match(readFileSync(path.join(cfg.logDirectory, "ok.log"), "utf8"), / stdout F bye\n$/);

    // a container that handles the stop signal ends well before the timeout
    const { containerId: graceful } = await cri.runtime.createContainer({
      podSandboxId: pod,
      config: containerConfig(
        "graceful",
        sh("trap 'echo bye; exit 0' TERM; while true; do /bin/busybox sleep 0.1; done"),
      ),
      sandboxConfig: cfg,
    });
    await cri.runtime.startContainer({ containerId: graceful });
    const t0 = Date.now();
    await cri.runtime.stopContainer({ containerId: graceful, timeout: 20n });
    assert.ok(Date.now() - t0 < 10_000, "stopped by its stop signal, not the timeout");
    const gs = await cri.runtime.containerStatus({ containerId: graceful });
    assert.equal(gs.status?.exitCode, 0);
    assert.equal(gs.status?.reason, "Completed");

    // RemovePodSandbox on a ready pod stops it and removes its containers
    await cri.runtime.removePodSandbox({ podSandboxId: pod });
    assert.deepEqual((await cri.runtime.listContainers({})).containers, []);

    // a pod whose pause process dies is no longer ready
    const { podSandboxId: dying } = await cri.runtime.runPodSandbox({ config: podConfig() });
    const dinfo = await cri.runtime.podSandboxStatus({ podSandboxId: dying, verbose: true });
    process.kill((JSON.parse(dinfo.info.info ?? "{}") as { pid: number }).pid, "SIGKILL");
    let dstate: PodSandboxState | undefined;
    await until("pod not ready", () => {
      void cri.runtime.podSandboxStatus({ podSandboxId: dying }).then((r) => {
        dstate = r.status?.state;
      });
      return dstate === PodSandboxState.SANDBOX_NOTREADY;
    });
    await cri.runtime.stopPodSandbox({ podSandboxId: dying });
    await cri.runtime.removePodSandbox({ podSandboxId: dying });
  });

  it("applies the security context: user, read-only rootfs, seccomp, host namespaces", async () => {
    const cfg = podConfig({
      linux: { securityContext: { namespaceOptions: { pid: NamespaceMode.POD } } },
    });
    const { podSandboxId: pod } = await cri.runtime.runPodSandbox({ config: cfg });
    const { containerId } = await cri.runtime.createContainer({
      podSandboxId: pod,
      config: containerConfig("sec", [BB, "sleep", "1000"], {
        linux: {
          securityContext: {
            runAsUser: { value: 65534n },
            readonlyRootfs: true,
            seccomp: { profileType: SecurityProfile_ProfileType.RuntimeDefault },
            namespaceOptions: { pid: NamespaceMode.POD },
          },
        },
      }),
      sandboxConfig: cfg,
    });
    await cri.runtime.startContainer({ containerId });
    const id = await cri.runtime.execSync({ containerId, cmd: [BB, "id"] });
    assert.equal(
      Buffer.from(id.stdout).toString().trim(),
      "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)",
    );
    // the other run-as forms: a user name, uid:gid, extra groups
    for (const [name, sc, want] of [
      ["byname", { runAsUsername: "nobody" }, "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"],
      [
        "uidgid",
        { runAsUser: { value: 65534n }, runAsGroup: { value: 0n } },
        "uid=65534(nobody) gid=0(root) groups=0(root)",
      ],
      [
        "groups",
        { runAsUser: { value: 0n }, supplementalGroups: [1234n] },
        "uid=0(root) gid=0(root) groups=0(root),1234",
      ],
    ] as const) {
      const r = await cri.runtime.createContainer({
        podSandboxId: pod,
        config: containerConfig(name, [BB, "sleep", "1000"], { linux: { securityContext: sc } }),
        sandboxConfig: cfg,
      });
      await cri.runtime.startContainer({ containerId: r.containerId });
      const out = await cri.runtime.execSync({ containerId: r.containerId, cmd: [BB, "id"] });
      assert.equal(Buffer.from(out.stdout).toString().trim(), want, name);
    }
    const touch = await cri.runtime.execSync({ containerId, cmd: [BB, "touch", "/x"] });
    assert.notEqual(touch.exitCode, 0, "read-only rootfs");
    const status = await cri.runtime.execSync({
      containerId,
      cmd: [BB, "grep", "Seccomp:", "/proc/self/status"],
    });
    assert.match(Buffer.from(status.stdout).toString(), /Seccomp:\s+2/);
    // a user namespace needs no capability, only the runtime/default profile refuses it
    const userns = await cri.runtime.execSync({ containerId, cmd: [BB, "unshare", "-U", "true"] });
    assert.notEqual(userns.exitCode, 0, "unshare blocked by seccomp");
    assert.match(Buffer.from(userns.stderr).toString(), /Operation not permitted/);
    const { containerId: free } = await cri.runtime.createContainer({
      podSandboxId: pod,
      config: containerConfig("unconfined", [BB, "sleep", "1000"], {
        linux: { securityContext: { seccomp: { profileType: SecurityProfile_ProfileType.Unconfined } } },
      }),
      sandboxConfig: cfg,
    });
    await cri.runtime.startContainer({ containerId: free });
    const freeNs = await cri.runtime.execSync({ containerId: free, cmd: [BB, "unshare", "-U", "true"] });
    assert.equal(freeNs.exitCode, 0, Buffer.from(freeNs.stderr).toString());
    // shared PID namespace: the pause process is visible
    const psOut = await cri.runtime.execSync({ containerId, cmd: [BB, "ps", "-o", "args"] });
    assert.match(Buffer.from(psOut.stdout).toString(), /sleep 1000000/);
    await cri.runtime.removePodSandbox({ podSandboxId: pod });
  });

  it("applies sysctls, masked paths, privileged and host namespaces", async () => {
    const hostNs = (t: string) => readlinkSync(`/proc/self/ns/${t}`);
    const cfg = podConfig({
      linux: {
        sysctls: { "kernel.shm_rmid_forced": "1" },
        securityContext: { privileged: true },
      },
    });
    const { podSandboxId: pod } = await cri.runtime.runPodSandbox({ config: cfg });
    const mk = async (name: string, linux: Record<string, unknown>, devices: unknown[] = []) => {
      const { containerId } = await cri.runtime.createContainer({
        podSandboxId: pod,
        config: containerConfig(name, [BB, "sleep", "1000"], { linux, devices }),
        sandboxConfig: cfg,
      });
      await cri.runtime.startContainer({ containerId });
      return containerId;
    };
    const out = async (id: string, cmd: string[]) =>
      Buffer.from((await cri.runtime.execSync({ containerId: id, cmd })).stdout).toString();
    const plain = await mk("plain", { securityContext: { maskedPaths: ["/proc/version"] } }, [
      { containerPath: "/dev/xnull", hostPath: "/dev/null", permissions: "rwm" },
    ]);
    assert.equal(await out(plain, [BB, "stat", "-c", "%t,%T", "/dev/xnull"]), "1,3\n");
    assert.equal(await out(plain, [BB, "cat", "/proc/sys/kernel/shm_rmid_forced"]), "1\n");
    assert.equal(await out(plain, [BB, "cat", "/proc/version"]), "", "masked path");
    assert.match(await out(plain, [BB, "grep", "CapEff", "/proc/self/status"]), /CapEff:\s+00000000a80425fb/);
    const priv = await mk("priv", {
      securityContext: { privileged: true, namespaceOptions: { pid: NamespaceMode.NODE } },
    });
    assert.match(await out(priv, [BB, "cat", "/proc/version"]), /Linux version/);
    assert.doesNotMatch(await out(priv, [BB, "grep", "CapEff", "/proc/self/status"]), /a80425fb/);
    assert.equal((await out(priv, [BB, "readlink", "/proc/self/ns/pid"])).trim(), hostNs("pid"));
    assert.notEqual((await out(plain, [BB, "readlink", "/proc/self/ns/pid"])).trim(), hostNs("pid"));
    await cri.runtime.removePodSandbox({ podSandboxId: pod });

    // a host-network, host-IPC pod: no netns of its own, no IP, the node's hostname
    const hcfg = podConfig({
      hostname: "",
      linux: {
        securityContext: { namespaceOptions: { network: NamespaceMode.NODE, ipc: NamespaceMode.NODE } },
      },
    });
    const { podSandboxId: hpod } = await cri.runtime.runPodSandbox({ config: hcfg });
    const hs = await cri.runtime.podSandboxStatus({ podSandboxId: hpod });
    assert.equal(hs.status?.network?.ip, "");
    assert.equal(hs.status?.linux?.namespaces?.options?.network, NamespaceMode.NODE);
    const { containerId: hc } = await cri.runtime.createContainer({
      podSandboxId: hpod,
      config: containerConfig("h", [BB, "sleep", "1000"]),
      sandboxConfig: hcfg,
    });
    await cri.runtime.startContainer({ containerId: hc });
    assert.equal((await out(hc, [BB, "readlink", "/proc/self/ns/net"])).trim(), hostNs("net"));
    assert.equal((await out(hc, [BB, "readlink", "/proc/self/ns/ipc"])).trim(), hostNs("ipc"));
    assert.equal((await out(hc, [BB, "hostname"])).trim(), hostname());
    await cri.runtime.removePodSandbox({ podSandboxId: hpod });
  });

  it("reports OOMKilled for a container over its memory limit", async () => {
    const cfg = podConfig();
    const { podSandboxId: pod } = await cri.runtime.runPodSandbox({ config: cfg });
    const mib16 = 16n * 1024n * 1024n;
    const { containerId } = await cri.runtime.createContainer({
      podSandboxId: pod,
      // tail keeps the last lines; /dev/zero has no line end, so its buffer only grows
      config: containerConfig("hog", [BB, "tail", "/dev/zero"], {
        linux: {
          securityContext: { namespaceOptions: { pid: NamespaceMode.CONTAINER } },
          resources: { memoryLimitInBytes: mib16, memorySwapLimitInBytes: mib16 },
        },
      }),
      sandboxConfig: cfg,
    });
    await cri.runtime.startContainer({ containerId });
    await waitState(containerId, ContainerState.CONTAINER_EXITED);
    const s = await cri.runtime.containerStatus({ containerId });
    assert.equal(s.status?.exitCode, 137);
    assert.equal(s.status?.reason, "OOMKilled");
    await cri.runtime.removePodSandbox({ podSandboxId: pod });
  });

  it("creates and removes 100 pods, 20 at a time, without leaking addresses, netns, mounts or shims", async () => {
    for (let round = 0; round < 5; round++) {
      const cfgs = Array.from({ length: 20 }, () => podConfig());
      const ids = await Promise.all(
        cfgs.map(async (config) => (await cri.runtime.runPodSandbox({ config })).podSandboxId),
      );
      const ips = await Promise.all(
        ids.map(async (id) => (await cri.runtime.podSandboxStatus({ podSandboxId: id })).status?.network?.ip),
      );
      assert.equal(new Set(ips).size, 20);
      assert.equal(ipamReservations(ipamDir).length, 20);
      assert.equal(shimsOf(d.address).length, 20);
      await Promise.all(
        ids.map(async (id) => {
          await cri.runtime.stopPodSandbox({ podSandboxId: id });
          await cri.runtime.removePodSandbox({ podSandboxId: id });
        }),
      );
      assert.deepEqual(ipamReservations(ipamDir), [], `round ${round}: addresses`);
      assert.deepEqual(existsSync(netnsDir) ? readdirSync(netnsDir) : [], [], `round ${round}: netns files`);
    }
    assert.deepEqual((await cri.runtime.listPodSandbox({})).items, []);
    await until("shims gone", () => shimsOf(d.address).length === 0);
    assert.deepEqual(
      mountsUnder(path.join(tmp, "state")).filter((m) => !m.endsWith("/netns")),
      [],
    );
    assert.equal(
      ok(await ctr(d.address, ["-n", "k8s.io", "snapshots", "ls"]))
        .trim()
        .split("\n").length,
      2,
      "only the image's layer snapshots stay",
    );
  });

  it("hands a retried RunPodSandbox the first attempt's pod", async () => {
    const base = podConfig();
    const cfg = { ...base, metadata: { ...base.metadata, name: `slow-${base.metadata.name}` } };
    // the first call gives up while CNI ADD still sleeps; the attempt goes on in berthd
    const t0 = Date.now();
    await assert.rejects(
      cri.runtime.runPodSandbox({ config: cfg }, { timeoutMs: 300 }),
      /deadline|DEADLINE/i,
    );
    const none = await cri.runtime.listPodSandbox({ filter: { labelSelector: { n: cfg.labels.n } } });
    assert.deepEqual(none.items, [], "the first attempt is still in CNI ADD when the retry comes");
    // the kubelet's retry waits for that attempt and is handed its pod, not "name is reserved"
    const { podSandboxId } = await cri.runtime.runPodSandbox({ config: cfg });
    assert.ok(Date.now() - t0 >= 2000, "the retry answered only once the slow ADD was done");
    const listed = (await cri.runtime.listPodSandbox({ filter: { labelSelector: { n: cfg.labels.n } } }))
      .items;
    assert.deepEqual(
      listed.map((p) => p.id),
      [podSandboxId],
    );
    const st = await cri.runtime.podSandboxStatus({ podSandboxId });
    assert.match(st.status?.network?.ip ?? "", new RegExp(`^10\\.89\\.${subnet}\\.`));
    // a different request for the same name is refused as containerd refuses it
    const other = { ...cfg, hostname: "elsewhere" };
    const again = await cri.runtime.runPodSandbox({ config: other }).catch((e: Error) => e);
    assert.ok(again instanceof Error && /name .* is reserved/.test(again.message), String(again));
    // a failed attempt releases the name and leaves nothing behind
    const cfg3 = podConfig();
    await assert.rejects(
      cri.runtime.runPodSandbox({ config: cfg3, runtimeHandler: "nope" }),
      /no runtime for "nope"/,
    );
    const third = await cri.runtime.runPodSandbox({ config: cfg3 });
    await cri.runtime.removePodSandbox({ podSandboxId: third.podSandboxId });
    // concurrent calls with one name share one attempt
    const cfg2 = podConfig();
    const [a, b] = await Promise.all([
      cri.runtime.runPodSandbox({ config: cfg2 }),
      cri.runtime.runPodSandbox({ config: cfg2 }),
    ]);
    assert.equal(a.podSandboxId, b.podSandboxId);
    // CreateContainer is retry-safe the same way
    const ccfg = containerConfig("retried", [BB, "sleep", "1000"]);
    const timedOut = await cri.runtime
      .createContainer({ podSandboxId, config: ccfg, sandboxConfig: cfg }, { timeoutMs: 20 })
      .then(
        (r) => r.containerId,
        () => undefined,
      );
    const retried = await cri.runtime.createContainer({ podSandboxId, config: ccfg, sandboxConfig: cfg });
    if (timedOut) assert.equal(retried.containerId, timedOut);
    const cs = await cri.runtime.listContainers({ filter: { podSandboxId } });
    assert.deepEqual(
      cs.containers.map((c) => c.id),
      [retried.containerId],
    );
    await cri.runtime.removePodSandbox({ podSandboxId });
    await cri.runtime.removePodSandbox({ podSandboxId: a.podSandboxId });
  });

  it("recovers pods and containers after kill -9 of berthd", async () => {
    const cfg = podConfig();
    const { podSandboxId: pod } = await cri.runtime.runPodSandbox({ config: cfg });
    const ip = (await cri.runtime.podSandboxStatus({ podSandboxId: pod })).status?.network?.ip;
    const mk = async (name: string, cmd: string[]) => {
      const { containerId } = await cri.runtime.createContainer({
        podSandboxId: pod,
        config: containerConfig(name, cmd),
        sandboxConfig: cfg,
      });
      await cri.runtime.startContainer({ containerId });
      return containerId;
    };
    const long = await mk("long", sh("echo before; exec /bin/busybox sleep 1000"));
    const short = await mk("short", sh("/bin/busybox sleep 3; exit 5"));
    cri.close();
    await d.kill9();
    d = await restartDaemon(d);
    cri = criClient(d.address);
    const ps = await cri.runtime.podSandboxStatus({ podSandboxId: pod });
    assert.equal(ps.status?.state, PodSandboxState.SANDBOX_READY);
    assert.equal(ps.status?.network?.ip, ip);
    const ls = await cri.runtime.containerStatus({ containerId: long });
    assert.equal(ls.status?.state, ContainerState.CONTAINER_RUNNING);
    assert.equal(ls.status?.logPath, path.join(cfg.logDirectory, "long.log"));
    await waitState(short, ContainerState.CONTAINER_EXITED);
    const ss = await cri.runtime.containerStatus({ containerId: short });
    assert.equal(ss.status?.exitCode, 5);
    const r = await cri.runtime.execSync({
      containerId: long,
      cmd: sh("echo after > /proc/1/fd/1; echo ok"),
    });
    assert.equal(Buffer.from(r.stdout).toString(), "ok\n");
    const logPath = path.join(cfg.logDirectory, "long.log");
    await until("log after restart", () => readFileSync(logPath, "utf8").includes("stdout F after"));
    await cri.runtime.stopPodSandbox({ podSandboxId: pod });
    await cri.runtime.removePodSandbox({ podSandboxId: pod });
    assert.deepEqual(ipamReservations(ipamDir), []);
  });
});
