// CNI with the real Debian plugins (bridge, host-local, portmap, loopback) on netns files made by
// src/sys/netns.ts. Everything lives in the test's own bridge and 10.88.<random>.0/24 subnet;
// only addresses of that subnet inside the test's netns (and 127.0.0.1) are ever contacted.
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { CniManager, CniPluginError, type PodIdentity, ResultCache } from "../../src/core/cni/index.js";
import { createNetns, netnsExists, removeNetns } from "../../src/sys/netns.js";
import { freeSubnetOctets } from "../helpers/net.js";
import { makeTempDir, mountsUnder, removeTempDir } from "../helpers/tmp.js";

const run = promisify(execFile);
const CNI_BIN = "/usr/lib/cni";

async function sh(
  cmd: string,
  args: string[],
  timeout = 20_000,
): Promise<{ stdout: string; stderr: string }> {
  return run(cmd, args, { timeout });
}

async function succeeds(cmd: string, args: string[]): Promise<boolean> {
  try {
    await sh(cmd, args);
    return true;
  } catch {
    return false;
  }
}

function ipamReservations(dir: string): string[] {
  // host-local keeps one file per reserved address (named by the IP) plus lock and last_reserved_ip.*
  const out: string[] = [];
  if (!existsSync(dir)) return out;
  for (const net of readdirSync(dir)) {
    const d = path.join(dir, net);
    for (const f of readdirSync(d)) if (/^\d+\.\d+\.\d+\.\d+$/.test(f) || f.includes(":")) out.push(f);
  }
  return out;
}

describe("CNI with the real plugins", { timeout: 300_000 }, () => {
  let tmp: string;
  let confDir: string;
  let cacheDir: string;
  let ipamDir: string;
  let netnsDir: string;
  let bridge: string;
  let subnet: number;
  let netName: string;
  let cni: CniManager;
  const created: string[] = [];

  const conflist = (extra: Record<string, unknown> = {}) =>
    JSON.stringify({
      cniVersion: "1.0.0",
      name: netName,
      plugins: [
        {
          type: "bridge",
          bridge,
          isGateway: true,
          ipMasq: false,
          hairpinMode: true,
          ipam: { type: "host-local", ranges: [[{ subnet: `10.88.${subnet}.0/24` }]], dataDir: ipamDir },
          ...extra,
        },
        { type: "portmap", capabilities: { portMappings: true } },
      ],
    });

  const pod = (name: string): PodIdentity => ({
    namespace: "cni-test",
    name,
    uid: randomBytes(8).toString("hex"),
  });
  const podId = () => randomBytes(32).toString("hex");

  async function newNetns(): Promise<string> {
    const p = await createNetns(netnsDir);
    created.push(p);
    return p;
  }

  before(async () => {
    assert.ok(existsSync(path.join(CNI_BIN, "bridge")), `containernetworking-plugins missing in ${CNI_BIN}`);
    tmp = await makeTempDir("cni");
    confDir = path.join(tmp, "net.d");
    cacheDir = path.join(tmp, "cache");
    ipamDir = path.join(tmp, "ipam");
    netnsDir = path.join(tmp, "netns");
    subnet = freeSubnetOctets("10.88")[0]!;
    const tag = randomBytes(3).toString("hex");
    bridge = `berthc${tag}`;
    netName = `berth-cni-test-${tag}`;
    await sh("mkdir", ["-p", confDir]);
    cni = new CniManager({ binDirs: [CNI_BIN], confDir, maxConfNum: 1, cacheDir });
  });

  after(async () => {
    // Pods a failed test left set up (their cache entries say which): DEL them, so no portmap
    // rules or veths stay behind.
    const results = path.join(cacheDir ?? "/nonexistent", "results");
    if (cni && existsSync(results))
      for (const f of readdirSync(results)) {
        try {
          const e = JSON.parse(readFileSync(path.join(results, f), "utf8")) as { containerId: string };
          await cni.teardown(e.containerId, "", pod("cleanup"));
        } catch {
          // already torn down with an earlier entry of the same pod, or not ours to fix here
        }
      }
    for (const p of created) {
      try {
        removeNetns(p);
      } catch (err) {
        process.stderr.write(`cni test cleanup: ${(err as Error).message}\n`);
      }
    }
    if (bridge && (await succeeds("ip", ["link", "show", bridge]))) await sh("ip", ["link", "del", bridge]);
    if (tmp) await removeTempDir(tmp);
  });

  it("is not ready without a config, with containerd's reason", async () => {
    const st = await cni.status();
    assert.equal(st.ready, false);
    assert.ok(!st.ready);
    assert.equal(st.reason, "NetworkPluginNotReady");
    assert.match(st.error, new RegExp(`no network config found in ${confDir}`));
    await assert.rejects(cni.setup(podId(), "/nonexistent", pod("x")), /no network config found/);
    writeFileSync(path.join(confDir, "10-test.conflist"), conflist());
    assert.deepEqual(await cni.status(), { ready: true });
  });

  it("creates, detects and removes a netns file", async () => {
    const p = await newNetns();
    assert.ok(p.startsWith(`${netnsDir}/cni-`));
    assert.equal(netnsExists(p), true);
    // A separate namespace: only lo, down.
    const links = (await sh("nsenter", [`--net=${p}`, "ip", "-o", "link"])).stdout;
    assert.match(links, /^1: lo:/);
    assert.equal(links.trim().split("\n").length, 1);
    removeNetns(p);
    assert.equal(netnsExists(p), false);
    assert.equal(existsSync(p), false);
    removeNetns(p); // idempotent
    assert.deepEqual(mountsUnder(netnsDir), [netnsDir]);
  });

  it("makes namespaces in-process and leaves this thread in its own namespace", async () => {
    // createNetns moves the event-loop thread into each new namespace and back (src/sys/netns.ts)
    const home = statSync("/proc/thread-self/ns/net").ino;
    const made = await Promise.all(Array.from({ length: 5 }, () => newNetns()));
    assert.equal(statSync("/proc/thread-self/ns/net").ino, home);
    assert.equal(statSync("/proc/self/ns/net").ino, home);
    const inos = made.map((p) => statSync(p).ino);
    assert.equal(new Set([...inos, home]).size, 6, "five distinct namespaces, none of them this one");
    // a socket made now is in the daemon's namespace: it reaches a listener on the host's loopback
    const server = net.createServer((c) => c.end("here")).listen(0, "127.0.0.1");
    await once(server, "listening");
    try {
      const port = (server.address() as net.AddressInfo).port;
      const got = await new Promise<string>((resolve, reject) => {
        const c = net.connect(port, "127.0.0.1");
        let data = "";
        c.on("data", (b) => (data += b));
        c.on("end", () => resolve(data));
        c.on("error", reject);
      });
      assert.equal(got, "here");
    } finally {
      server.close();
    }
    for (const p of made) removeNetns(p);
    assert.deepEqual(mountsUnder(netnsDir), [netnsDir]);
  });

  it("gives two pods addresses; they reach each other, the bridge and the host reaches them; hostPort works on 127.0.0.1", async () => {
    const nsA = await newNetns();
    const nsB = await newNetns();
    const idA = podId();
    const idB = podId();
    const hostPort = 20_000 + (randomBytes(2).readUInt16BE() % 20_000);
    const portMappings = [{ hostPort, containerPort: 8080, protocol: "TCP", hostIP: "127.0.0.1" }];
    const a = await cni.setup(idA, nsA, pod("a"), { portMappings });
    const b = await cni.setup(idB, nsB, pod("b"));
    const inSubnet = new RegExp(`^10\\.88\\.${subnet}\\.\\d+$`);
    assert.match(a.ip, inSubnet);
    assert.match(b.ip, inSubnet);
    assert.notEqual(a.ip, b.ip);
    assert.deepEqual(a.additionalIps, []);
    const gw = `10.88.${subnet}.1`;
    assert.equal(a.interfaces["eth0"]!.ips[0]!.gateway, gw);
    assert.equal(a.interfaces["eth0"]!.sandbox, nsA);
    assert.ok(a.interfaces["lo"], "loopback set up");
    assert.deepEqual(
      a.networks.map((n) => [n.name, n.ifName]),
      [
        ["cni-loopback", "lo"],
        [netName, "eth0"],
      ],
    );
    // lo is up inside the pod (the loopback plugin).
    assert.match((await sh("nsenter", [`--net=${nsA}`, "ip", "-o", "link", "show", "lo"])).stdout, /UP/);

    const ping = (ns: string | undefined, ip: string) =>
      ns
        ? sh("nsenter", [`--net=${ns}`, "/bin/busybox", "ping", "-c", "1", "-W", "3", ip])
        : sh("/bin/busybox", ["ping", "-c", "1", "-W", "3", ip]);
    await ping(nsA, b.ip);
    await ping(nsB, a.ip);
    await ping(nsA, gw);
    await ping(undefined, a.ip);

    // hostPort: a server inside pod A, reached through 127.0.0.1:<hostPort> on the host.
    const server = spawn(
      "nsenter",
      [
        `--net=${nsA}`,
        "/bin/busybox",
        "nc",
        "-ll",
        "-p",
        "8080",
        "-e",
        "/bin/busybox",
        "echo",
        "berth-hostport-ok",
      ],
      { stdio: "ignore" },
    );
    try {
      let got = "";
      for (let i = 0; i < 50 && !got.includes("berth-hostport-ok"); i++) {
        got = await new Promise<string>((resolve) => {
          const s = net.connect({ host: "127.0.0.1", port: hostPort });
          let data = "";
          s.setTimeout(2000, () => s.destroy());
          s.on("data", (d) => {
            data += d.toString();
          });
          s.on("error", () => resolve(""));
          s.on("close", () => resolve(data));
        });
        if (!got) await new Promise((r) => setTimeout(r, 100));
      }
      assert.match(got, /berth-hostport-ok/);
    } finally {
      server.kill("SIGKILL");
    }

    // CHECK runs the real plugins: B passes, and fails naming bridge once its eth0 is gone.
    // (A is not checked: portmap 1.1.1's CHECK also looks for an IPv6 chain whenever ip6tables
    // works, so it fails for every IPv4-only pod with port mappings — a plugin bug.)
    await cni.check(idB, nsB, pod("b"));

    const nat = (await sh("iptables-save", ["-t", "nat"])).stdout;
    assert.ok(nat.includes(idA), "portmap rules for pod A exist while it is up");
    assert.equal(ipamReservations(ipamDir).length, 2);

    await cni.teardown(idA, nsA, pod("a"), { portMappings });
    await sh("nsenter", [`--net=${nsB}`, "ip", "link", "del", "eth0"]);
    await assert.rejects(cni.check(idB, nsB, pod("b")), /plugin type="bridge" name=".*" failed \(check\)/);
    await cni.teardown(idB, nsB, pod("b"));
    assert.deepEqual(ipamReservations(ipamDir), []);
    const natAfter = (await sh("iptables-save", ["-t", "nat"])).stdout;
    assert.ok(!natAfter.includes(idA), "portmap removed pod A's rules");
    // Second teardown: idempotent.
    await cni.teardown(idA, nsA, pod("a"), { portMappings });
    removeNetns(nsA);
    removeNetns(nsB);
  });

  it("DEL after a restart uses the cached result and config, even with the conf file gone", async () => {
    const ns = await newNetns();
    const id = podId();
    const p = pod("cached");
    const r = await cni.setup(id, ns, p);
    const cache = new ResultCache(cacheDir);
    const entry = await cache.get(netName, id, "eth0");
    assert.ok(entry, "result cached");
    assert.equal(JSON.stringify(entry.result).includes(r.ip), true);
    assert.deepEqual(ipamReservations(ipamDir), [r.ip]);

    // A new manager (a restarted daemon) whose conf dir no longer has the network.
    const conf = path.join(confDir, "10-test.conflist");
    const saved = readFileSync(conf);
    rmSync(conf);
    try {
      const restarted = new CniManager({ binDirs: [CNI_BIN], confDir, maxConfNum: 1, cacheDir });
      assert.equal((await restarted.status()).ready, false);
      await restarted.teardown(id, ns, p);
    } finally {
      writeFileSync(conf, saved);
    }
    assert.deepEqual(ipamReservations(ipamDir), []);
    assert.equal(await cache.get(netName, id, "eth0"), undefined);
    assert.equal(await cache.get("cni-loopback", id, "lo"), undefined);
    // The veth went with the netns interface: nothing of this pod is on the bridge.
    assert.deepEqual((await cache.forContainer(id)).length, 0);
    removeNetns(ns);
  });

  it("DEL of a pod never added succeeds, also with its netns gone", async () => {
    const ns = await newNetns();
    await cni.teardown(podId(), ns, pod("never"));
    removeNetns(ns);
    await cni.teardown(podId(), ns, pod("never-gone"));
  });

  it("DEL with a leftover netns file whose namespace mount is gone still frees the address", async () => {
    const ns = await newNetns();
    const id = podId();
    const r = await cni.setup(id, ns, pod("crashed"));
    assert.deepEqual(ipamReservations(ipamDir), [r.ip]);
    await sh("umount", [ns]); // as if berthd died between umount and unlink
    assert.equal(netnsExists(ns), false);
    assert.equal(existsSync(ns), true);
    await cni.teardown(id, ns, pod("crashed"));
    assert.deepEqual(ipamReservations(ipamDir), []);
    removeNetns(ns);
    assert.equal(existsSync(ns), false);
  });

  it("sets up and tears down 10 pods concurrently with distinct addresses", async () => {
    const pods = await Promise.all(
      Array.from({ length: 10 }, async (_, i) => ({ ns: await newNetns(), id: podId(), p: pod(`par-${i}`) })),
    );
    const results = await Promise.all(pods.map((x) => cni.setup(x.id, x.ns, x.p)));
    assert.equal(new Set(results.map((r) => r.ip)).size, 10);
    assert.equal(ipamReservations(ipamDir).length, 10);
    await Promise.all(pods.map((x) => cni.teardown(x.id, x.ns, x.p)));
    assert.deepEqual(ipamReservations(ipamDir), []);
    for (const x of pods) removeNetns(x.ns);
  });

  it("100 ADD/DEL cycles leak no address, netns file or mount", async () => {
    for (let i = 0; i < 100; i++) {
      const ns = await createNetns(netnsDir);
      const id = podId();
      const p = pod(`cycle-${i}`);
      const r = await cni.setup(id, ns, p);
      assert.match(r.ip, new RegExp(`^10\\.88\\.${subnet}\\.`));
      await cni.teardown(id, ns, p);
      removeNetns(ns);
    }
    assert.deepEqual(ipamReservations(ipamDir), []);
    assert.deepEqual(readdirSync(netnsDir), []);
    assert.deepEqual(mountsUnder(netnsDir), [netnsDir]);
    assert.deepEqual(readdirSync(path.join(cacheDir, "results")), []);
  });

  it("names the plugin in errors: a missing binary and a plugin's own error", async () => {
    const badDir = path.join(tmp, "bad.d");
    await sh("mkdir", ["-p", badDir]);
    writeFileSync(
      path.join(badDir, "10-bad.conflist"),
      JSON.stringify({ cniVersion: "1.0.0", name: "bad", plugins: [{ type: "berth-no-such-plugin" }] }),
    );
    const bad = new CniManager({
      binDirs: [CNI_BIN, "/nonexistent"],
      confDir: badDir,
      maxConfNum: 1,
      cacheDir,
    });
    const ns = await newNetns();
    await assert.rejects(
      bad.setup(podId(), ns, pod("bad")),
      /failed to find plugin "berth-no-such-plugin" in path \[\/usr\/lib\/cni \/nonexistent\]/,
    );
    // host-local refuses a range outside its subnet: the error object becomes a CniPluginError.
    writeFileSync(
      path.join(badDir, "10-bad.conflist"),
      conflist({
        ipam: {
          type: "host-local",
          ranges: [[{ subnet: `10.88.${subnet}.0/24`, rangeStart: `10.88.${subnet === 1 ? 2 : 1}.10` }]],
          dataDir: ipamDir,
        },
      }),
    );
    const err = await bad.setup(podId(), ns, pod("bad")).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(err instanceof CniPluginError, `got ${String(err)}`);
    assert.equal(err.plugin, "bridge");
    assert.match(err.message, /^plugin type="bridge" name=".*" failed \(add\): /);
    assert.ok(err.msg.length > 0);
    // The failed setup cleaned up after itself: loopback's cache entry is gone again.
    assert.deepEqual(ipamReservations(ipamDir), []);
    removeNetns(ns);
  });
});
