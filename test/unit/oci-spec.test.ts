// OCI spec generation: `berth run`'s flags as spec options produce the same spec as the code they
// replaced (JSON fixtures captured from it), and each option changes what it says and no more.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { containerSpecOpts, readContainerFlags } from "../../src/cmd/berth/container-flags.js";
import {
  currentCapabilities,
  DEFAULT_CAPS,
  DEFAULT_MASKED_PATHS,
  DEFAULT_PATH_ENV,
  defaultSpec,
  generateSpec,
  hostDevices,
  type ImageRunConfig,
  type Spec,
  type SpecOpt,
  withAddedCapabilities,
  withAdditionalGids,
  withAllCurrentCapabilities,
  withAllDevicesAllowed,
  withAnnotations,
  withBindMount,
  withCapabilities,
  withCgroupsPath,
  withCPUCFS,
  withCPUShares,
  withCPUs,
  withCPUsMems,
  withDeviceRules,
  withDevices,
  withDroppedCapabilities,
  withEnv,
  withExtraGids,
  withHostDevices,
  withHostNamespace,
  withHostNetwork,
  withHostname,
  withImageConfig,
  withImageConfigArgs,
  withLinuxDevice,
  withLinuxNamespace,
  withMaskedPaths,
  withMemoryLimit,
  withMemorySwap,
  withMounts,
  withMountsReplacing,
  withNoNewPrivileges,
  withOOMScoreAdj,
  withoutMount,
  withPidsLimit,
  withPrivileged,
  withProcessArgs,
  withProcessCwd,
  withReadonlyPaths,
  withRlimit,
  withRootfsReadonly,
  withSeccompProfile,
  withSysctls,
  withTTY,
  withUidGid,
  withUser,
  withUserId,
  withWriteableCgroupfs,
  withWriteableSysfs,
} from "../../src/core/oci/index.js";
import { makeTempDirSync, removeTempDirSync } from "../helpers/tmp.js";

const FIXTURES = new URL("../../../test/unit/fixtures/oci-spec-legacy.json", import.meta.url);

let root = "";
before(() => {
  // the rootfs the fixtures were captured with: users, groups and an env file
  root = makeTempDirSync("oci-spec");
  mkdirSync(path.join(root, "etc"));
  writeFileSync(
    path.join(root, "etc/passwd"),
    "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nalice:x:1000:1000::/home/alice:/bin/sh\n",
  );
  writeFileSync(
    path.join(root, "etc/group"),
    "root:x:0:\ndaemon:x:1:\nwheel:x:10:alice,daemon\nalice:x:1000:alice\naudio:x:29:alice\n",
  );
  writeFileSync(path.join(root, "envfile"), "FROMFILE=1\r\nHOME\nPATH=/file/bin\n");
});
after(() => removeTempDirSync(root));

const gen = (opts: SpecOpt[], rootfs?: string) => generateSpec("ns", "c1", opts, { rootfs });

describe("berth run's spec (fixtures from the code before spec options)", () => {
  interface Case {
    name: string;
    image: ImageRunConfig;
    args: string[];
    flags: Record<string, unknown>;
    root: boolean;
    spec: Spec;
  }
  const cases = JSON.parse(readFileSync(FIXTURES, "utf8")) as Case[];
  const defaults = { cpuShares: "1024", cpuQuota: "-1", cpuPeriod: "0", runtime: "io.containerd.runc.v2" };
  for (const c of cases) {
    it(c.name, async () => {
      const flags: Record<string, unknown> = { ...defaults, ...c.flags };
      if (flags.envFile) flags.envFile = path.join(root, "envfile");
      const opts = containerSpecOpts(c.image, c.args, readContainerFlags(flags));
      const spec = await generateSpec("ns1", `ctr-${c.name}`, opts, { rootfs: c.root ? root : undefined });
      // host-dependent parts were replaced by placeholders when the fixtures were captured
      if (c.name === "privileged") {
        assert.deepEqual(spec.linux.devices, hostDevices());
        assert.deepEqual(spec.process.capabilities?.bounding, currentCapabilities());
        (spec.linux as unknown as Record<string, unknown>).devices = "@HOST_DEVICES@";
        const caps = spec.process.capabilities as Record<string, unknown>;
        for (const k of Object.keys(caps)) caps[k] = "@CURRENT_CAPS@";
      }
      const got = JSON.stringify(spec, null, 1).replaceAll(os.hostname(), "@HOSTNAME@");
      // byte-identical JSON: same fields, same values, same key order
      assert.equal(got, JSON.stringify(c.spec, null, 1));
    });
  }

  it("flag errors keep ctr's messages", async () => {
    const f = (o: Record<string, unknown>) =>
      gen(
        containerSpecOpts(
          {},
          [],
          readContainerFlags({ cpuShares: "1024", cpuQuota: "-1", cpuPeriod: "0", ...o }),
        ),
      );
    await assert.rejects(
      f({ cpus: "2", cpuQuota: "1000" }),
      /cpus and quota\/period should be used separately/,
    );
    await assert.rejects(f({ withNs: ["network"] }), /requires the format 'nstype:path'/);
    await assert.rejects(f({ withNs: ["bogus:/x"] }), /not valid: bogus/);
    await assert.rejects(f({ memoryLimit: "abc" }), /invalid value "abc" for flag --memory-limit/);
    await assert.rejects(f({ user: "alice" }), /names need the container's \/etc\/passwd/);
    assert.throws(() => containerSpecOpts({}, [], readContainerFlags({ mount: ["dst"] })), /not key=value/);
  });
});

describe("default spec", () => {
  it("is containerd's Linux default", async () => {
    const s = await gen([]);
    assert.deepEqual(s, defaultSpec("ns", "c1"));
    assert.equal(s.linux.cgroupsPath, "/ns/c1");
    assert.deepEqual(s.process.capabilities?.bounding, [...DEFAULT_CAPS]);
    assert.deepEqual(
      s.linux.namespaces.map((n) => n.type),
      ["pid", "ipc", "uts", "mount", "network"],
    );
    assert.equal(s.process.env, undefined);
    assert.equal(s.process.noNewPrivileges, true);
  });

  it("gives every caller its own copy", () => {
    const a = defaultSpec("ns", "a");
    a.mounts[0]!.options!.push("x");
    a.process.capabilities!.bounding!.pop();
    const b = defaultSpec("ns", "a");
    assert.deepEqual(b.mounts[0]!.options, ["nosuid", "noexec", "nodev"]);
    assert.equal(b.process.capabilities!.bounding!.length, DEFAULT_CAPS.length);
  });
});

describe("process options", () => {
  it("args, cwd, tty", async () => {
    const s = await gen([withProcessArgs("sh", "-c", "x"), withProcessCwd("/w"), withEnv(["A=1"]), withTTY]);
    assert.deepEqual(s.process.args, ["sh", "-c", "x"]);
    assert.equal(s.process.cwd, "/w");
    assert.equal(s.process.terminal, true);
    assert.deepEqual(s.process.env, ["A=1", "TERM=xterm"]);
  });

  it("env: K=V replaces in place, bare K removes, new keys append", async () => {
    const s = await gen([withEnv(["A=1", "B=2", "C=3"]), withEnv(["B=20", "A", "D=4"])]);
    assert.deepEqual(s.process.env, ["B=20", "C=3", "D=4"]);
  });

  it("image config: entrypoint + cmd, env under the caller's, workdir", async () => {
    const img: ImageRunConfig = {
      Env: ["PATH=/img", "X=img"],
      Entrypoint: ["/ep"],
      Cmd: ["a"],
      WorkingDir: "/wd",
    };
    const s = await gen([withEnv(["X=mine"]), withImageConfig(img)]);
    assert.deepEqual(s.process.args, ["/ep", "a"]);
    assert.deepEqual(s.process.env, ["PATH=/img", "X=mine"]);
    assert.equal(s.process.cwd, "/wd");
    const t = await gen([withImageConfigArgs(img, ["b", "c"])]);
    assert.deepEqual(t.process.args, ["/ep", "b", "c"]);
  });

  it("image config: no env gives the default PATH, no workdir gives /, null cmd is none", async () => {
    const s = await gen([withImageConfigArgs({ Entrypoint: null, Cmd: null }, [])]);
    assert.deepEqual(s.process.env, [DEFAULT_PATH_ENV]);
    assert.equal(s.process.cwd, "/");
    assert.deepEqual(s.process.args, []);
    assert.deepEqual(s.process.user, { uid: 0, gid: 0, additionalGids: [0] });
  });

  it("image config user resolves against the rootfs with its groups", async () => {
    const s = await gen([withImageConfig({ User: "alice" })], root);
    assert.deepEqual(s.process.user, { uid: 1000, gid: 1000, additionalGids: [1000, 10, 29] });
    const t = await gen([withImageConfig({ User: "daemon:wheel" })], root);
    assert.deepEqual(t.process.user, { uid: 1, gid: 10, additionalGids: [10] });
  });

  it("user: names need a rootfs; numbers work without one", async () => {
    await assert.rejects(gen([withUser("alice")]), /names need/);
    assert.deepEqual((await gen([withUser("5:6")])).process.user, { uid: 5, gid: 6, additionalGids: [6] });
    assert.deepEqual((await gen([withUser("alice")], root)).process.user, {
      uid: 1000,
      gid: 1000,
      additionalGids: [1000],
    });
    await assert.rejects(gen([withUser("nobody")], root), /no users found/);
    await assert.rejects(gen([withUser("alice:nogroup")], root), /no groups found/);
  });

  it("uid alone takes its gid from passwd; explicit uid/gid is not looked up", async () => {
    assert.deepEqual((await gen([withUserId(1000)], root)).process.user, {
      uid: 1000,
      gid: 1000,
      additionalGids: [1000],
    });
    assert.deepEqual((await gen([withUserId(77)], root)).process.user, {
      uid: 77,
      gid: 0,
      additionalGids: [0],
    });
    assert.deepEqual((await gen([withUidGid(7, 8)], root)).process.user, { uid: 7, gid: 8 });
  });

  it("additional gids: from /etc/group with a rootfs, the primary gid without", async () => {
    const s = await gen([withUser("alice"), withAdditionalGids("alice")], root);
    assert.deepEqual(s.process.user.additionalGids, [1000, 10, 29]);
    const t = await gen([withUidGid(3, 4), withAdditionalGids("3")]);
    assert.deepEqual(t.process.user.additionalGids, [4]);
    const u = await gen([withUidGid(3, 4), withExtraGids([4, 9, 9])]);
    assert.deepEqual(u.process.user.additionalGids, [4, 9]);
  });

  it("no_new_privileges, oom score, rlimits", async () => {
    const s = await gen([
      withNoNewPrivileges(false),
      withOOMScoreAdj(-500),
      withRlimit("RLIMIT_NOFILE", 4096, 2048),
      withRlimit("RLIMIT_NPROC", 10, 10),
    ]);
    assert.equal(s.process.noNewPrivileges, false);
    assert.equal(s.process.oomScoreAdj, -500);
    assert.deepEqual(s.process.rlimits, [
      { type: "RLIMIT_NOFILE", hard: 4096, soft: 2048 },
      { type: "RLIMIT_NPROC", hard: 10, soft: 10 },
    ]);
  });
});

describe("capabilities", () => {
  it("set, add, drop", async () => {
    const s = await gen([withCapabilities(["CAP_KILL", "chown"])]);
    assert.deepEqual(s.process.capabilities, {
      bounding: ["CAP_KILL", "CAP_CHOWN"],
      effective: ["CAP_KILL", "CAP_CHOWN"],
      permitted: ["CAP_KILL", "CAP_CHOWN"],
    });
    const t = await gen([
      withAddedCapabilities(["NET_ADMIN", "CAP_KILL"]),
      withDroppedCapabilities(["CAP_CHOWN"]),
    ]);
    for (const set of ["bounding", "effective", "permitted"] as const) {
      const caps = t.process.capabilities?.[set] ?? [];
      assert.ok(caps.includes("CAP_NET_ADMIN"));
      assert.ok(!caps.includes("CAP_CHOWN"));
      assert.equal(caps.filter((c) => c === "CAP_KILL").length, 1);
    }
    const u = await gen([withDroppedCapabilities(["ALL"]), withAddedCapabilities(["CAP_SYS_ADMIN"])]);
    assert.deepEqual(u.process.capabilities?.bounding, ["CAP_SYS_ADMIN"]);
    const all = await gen([withAddedCapabilities(["ALL"])]);
    assert.ok((all.process.capabilities?.bounding?.length ?? 0) >= 41);
  });

  it("all current capabilities are this process's effective set", async () => {
    const s = await gen([withAllCurrentCapabilities]);
    assert.deepEqual(s.process.capabilities?.effective, currentCapabilities());
  });
});

describe("mounts and rootfs", () => {
  it("appends, replaces by destination, removes, binds", async () => {
    const tmp = { destination: "/tmp", type: "tmpfs", source: "tmpfs", options: ["nosuid"] };
    const s = await gen([withMounts([tmp, tmp])]);
    assert.equal(s.mounts.filter((m) => m.destination === "/tmp").length, 2);
    const r = await gen([withMountsReplacing([{ destination: "/run/", type: "tmpfs", source: "x" }])]);
    const i = defaultSpec("ns", "c1").mounts.findIndex((m) => m.destination === "/run");
    assert.deepEqual(r.mounts[i], { destination: "/run/", type: "tmpfs", source: "x" });
    assert.equal(r.mounts.length, defaultSpec("ns", "c1").mounts.length);
    const d = await gen([withoutMount("/dev/shm")]);
    assert.ok(!d.mounts.some((m) => m.destination === "/dev/shm"));
    const b = await gen([
      withBindMount("/src", "/dst", { readonly: true, propagation: "rslave" }),
      withBindMount("/a", "/b", { recursive: false }),
    ]);
    assert.deepEqual(b.mounts.at(-2), {
      destination: "/dst",
      type: "bind",
      source: "/src",
      options: ["rbind", "ro", "rslave"],
    });
    assert.deepEqual(b.mounts.at(-1)?.options, ["bind", "rw"]);
  });

  it("readonly rootfs; writable sysfs and cgroupfs", async () => {
    const s = await gen([withRootfsReadonly(), withWriteableSysfs, withWriteableCgroupfs]);
    assert.equal(s.root.readonly, true);
    const sys = s.mounts.find((m) => m.destination === "/sys");
    const cg = s.mounts.find((m) => m.destination === "/sys/fs/cgroup");
    assert.ok(sys?.options?.includes("rw") && !sys.options.includes("ro"));
    assert.ok(cg?.options?.includes("rw") && !cg.options.includes("ro"));
    assert.equal((await gen([withRootfsReadonly(), withRootfsReadonly(false)])).root.readonly, undefined);
  });
});

describe("namespaces and host", () => {
  it("host namespaces leave the spec; joining sets a path", async () => {
    const s = await gen([withHostNamespace("pid"), withHostNamespace("ipc"), withHostNamespace("uts")]);
    assert.deepEqual(
      s.linux.namespaces.map((n) => n.type),
      ["mount", "network"],
    );
    const j = await gen([
      withLinuxNamespace({ type: "network", path: "/var/run/netns/x" }),
      withLinuxNamespace({ type: "user" }),
    ]);
    assert.deepEqual(j.linux.namespaces.at(4), { type: "network", path: "/var/run/netns/x" });
    assert.deepEqual(j.linux.namespaces.at(5), { type: "user" });
  });

  it("host network: no netns, hosts and resolv.conf bound read-only, HOSTNAME", async () => {
    const s = await gen([withEnv(["HOSTNAME=x"]), withHostNetwork]);
    assert.ok(!s.linux.namespaces.some((n) => n.type === "network"));
    for (const f of ["/etc/hosts", "/etc/resolv.conf"])
      assert.deepEqual(
        s.mounts.find((m) => m.destination === f),
        { destination: f, type: "bind", source: f, options: ["rbind", "ro"] },
      );
    assert.deepEqual(s.process.env, [`HOSTNAME=${os.hostname()}`]);
  });

  it("hostname, annotations, sysctls, seccomp pass-through", async () => {
    const profile = {
      defaultAction: "SCMP_ACT_ERRNO",
      syscalls: [{ names: ["read"], action: "SCMP_ACT_ALLOW" }],
    };
    const s = await gen([
      withHostname("box"),
      withAnnotations({ a: "1" }),
      withAnnotations({ b: "2", a: "3" }),
      withAnnotations({}),
      withSysctls({ "net.ipv4.ip_forward": "1" }),
      withSeccompProfile(profile),
    ]);
    assert.equal(s.hostname, "box");
    assert.deepEqual(s.annotations, { a: "3", b: "2" });
    assert.deepEqual(s.linux.sysctl, { "net.ipv4.ip_forward": "1" });
    assert.deepEqual(s.linux.seccomp, profile);
    assert.notEqual(s.linux.seccomp, profile);
    assert.equal((await gen([withAnnotations({})])).annotations, undefined);
    assert.equal(
      (await gen([withSeccompProfile(profile), withSeccompProfile(undefined)])).linux.seccomp,
      undefined,
    );
  });
});

describe("privileges, devices, paths", () => {
  it("privileged: current caps, no masked/readonly paths, writable sysfs and cgroupfs", async () => {
    const s = await gen([withPrivileged]);
    assert.deepEqual(s.process.capabilities?.permitted, currentCapabilities());
    assert.equal(s.linux.maskedPaths, undefined);
    assert.equal(s.linux.readonlyPaths, undefined);
    assert.ok(!s.mounts.find((m) => m.type === "sysfs")?.options?.includes("ro"));
    // devices are separate options
    assert.equal(s.linux.devices, undefined);
    assert.equal(s.linux.resources?.devices?.[0]?.allow, false);
  });

  it("all devices allowed, host devices, device nodes and rules", async () => {
    const s = await gen([withAllDevicesAllowed, withHostDevices]);
    assert.deepEqual(s.linux.resources?.devices, [{ allow: true, access: "rwm" }]);
    assert.deepEqual(s.linux.devices, hostDevices());
    assert.ok(s.linux.devices?.some((d) => d.path === "/dev/null"));
    const dev = {
      path: "/dev/fuse",
      type: "c" as const,
      major: 10,
      minor: 229,
      fileMode: 0o666,
      uid: 0,
      gid: 0,
    };
    const t = await gen([
      withDevices([dev]),
      withDeviceRules([{ allow: true, type: "c", major: 10, minor: 229, access: "rw" }]),
    ]);
    assert.deepEqual(t.linux.devices, [dev]);
    assert.deepEqual(t.linux.resources?.devices?.at(-1), {
      allow: true,
      type: "c",
      major: 10,
      minor: 229,
      access: "rw",
    });
    const n = await gen([withLinuxDevice("/dev/null", "rw", "/dev/mynull")]);
    assert.deepEqual(
      { ...n.linux.devices?.[0], fileMode: undefined, uid: undefined, gid: undefined },
      {
        path: "/dev/mynull",
        type: "c",
        major: 1,
        minor: 3,
        fileMode: undefined,
        uid: undefined,
        gid: undefined,
      },
    );
    assert.deepEqual(n.linux.resources?.devices?.at(-1), {
      allow: true,
      type: "c",
      major: 1,
      minor: 3,
      access: "rw",
    });
    await assert.rejects(gen([withLinuxDevice("/etc/hostname")]), /not a device node/);
  });

  it("masked and readonly paths set or removed", async () => {
    const s = await gen([withMaskedPaths(["/x"]), withReadonlyPaths(undefined)]);
    assert.deepEqual(s.linux.maskedPaths, ["/x"]);
    assert.equal(s.linux.readonlyPaths, undefined);
    assert.deepEqual((await gen([])).linux.maskedPaths, [...DEFAULT_MASKED_PATHS]);
  });
});

describe("cgroup resources", () => {
  it("cpu, cpuset, memory, pids, cgroups path", async () => {
    const s = await gen([
      withCPUShares(512),
      withCPUCFS(50_000, 100_000),
      withCPUs("0-1"),
      withCPUsMems("0"),
      withMemoryLimit(1 << 28),
      withMemorySwap(1 << 29),
      withPidsLimit(64),
      withCgroupsPath("/kubepods/pod1/c1"),
    ]);
    assert.deepEqual(s.linux.resources?.cpu, {
      shares: 512,
      quota: 50_000,
      period: 100_000,
      cpus: "0-1",
      mems: "0",
    });
    assert.deepEqual(s.linux.resources?.memory, { limit: 1 << 28, swap: 1 << 29 });
    assert.deepEqual(s.linux.resources?.pids, { limit: 64 });
    assert.equal(s.linux.cgroupsPath, "/kubepods/pod1/c1");
    // the default device rules stay
    assert.equal(
      s.linux.resources?.devices?.length,
      defaultSpec("ns", "c1").linux.resources?.devices?.length,
    );
  });

  it("options run in order, async ones awaited", async () => {
    const order: string[] = [];
    const s = await gen([
      async (sp) => {
        await new Promise((r) => setTimeout(r, 5));
        order.push("a");
        sp.hostname = "a";
      },
      (sp, ctx) => {
        order.push("b");
        sp.hostname = `${sp.hostname}-${ctx.namespace}-${ctx.id}`;
      },
    ]);
    assert.deepEqual(order, ["a", "b"]);
    assert.equal(s.hostname, "a-ns-c1");
  });
});
