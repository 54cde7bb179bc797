// Issue 12 item 1: config reload without restart, on a real berthd with real registries. SIGHUP and
// berth.config.v1.Config/Reload re-read config.toml; live keys apply to the next pull / log line,
// others are reported as needing a restart; a broken file changes nothing and names file, line and
// key; pulls in flight during a reload keep the registry config they started with; each applied
// reload publishes /config/reload on the event exchange.
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { createServer, request as httpRequest, type Server } from "node:http";
import { type AddressInfo, createServer as createNetServer } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { anyPack, anyUnpack } from "@bufbuild/protobuf/wkt";
import {
  Apply,
  Config,
  ConfigReloadedSchema,
  type ReloadResponse,
} from "../../src/gen/berth/config/v1/config_pb.js";
import { Events } from "../../src/gen/containerd/services/events/v1/events_pb.js";
import type { Envelope } from "../../src/gen/containerd/types/event_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { type CriClient, criClient } from "../helpers/cri.js";
import { berth, ctr, ok } from "../helpers/ctr.js";
import { type Daemon, GC_OFF_CONFIG, startBerthd } from "../helpers/daemons.js";
import { type BuiltImage, busyboxImageWith, pushImage } from "../helpers/images.js";
import { freePort, type Registry, startRegistry } from "../helpers/registry.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const REPO = "test/busybox";
const CRI = 'plugins."io.containerd.grpc.v1.cri"';
// Never resolves: a pull of it can only go through a configured mirror on loopback.
const FAKE = "registry.invalid";
const REF = `${FAKE}/${REPO}:1`;
const MIRROR_KEY = `${CRI}.registry.mirrors."${FAKE}".endpoint`;

/** A pass-through proxy in front of a registry that notes each request and can hold them all. */
interface Proxy {
  host: string;
  requests: string[];
  /** Requests waiting at the gate. */
  held(): number;
  hold(): void;
  release(): void;
  close(): Promise<void>;
}

async function startProxy(target: Registry): Promise<Proxy> {
  const requests: string[] = [];
  let gate: Promise<void> | undefined;
  let open = () => {};
  let waiting = 0;
  const server: Server = createServer(async (req, res) => {
    requests.push(`${req.method} ${req.url}`);
    if (gate) {
      waiting++;
      await gate;
      waiting--;
    }
    const up = httpRequest(
      `${target.url}${req.url}`,
      { method: req.method, headers: { ...req.headers, host: target.host } },
      (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      },
    );
    up.on("error", () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const proxy: Proxy = {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    held: () => waiting,
    hold() {
      gate = new Promise((r) => {
        open = r;
      });
    },
    release() {
      gate = undefined;
      open();
    },
    async close() {
      proxy.release();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  return proxy;
}

const show = (v: unknown) => JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? String(x) : x));

async function until(what: string, cond: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("config reload without restart", () => {
  let regA: Registry;
  let regB: Registry;
  let imgA: BuiltImage;
  let imgB: BuiltImage;
  let tmp: string;
  let d: Daemon;
  let conn: Connection;
  let cri: CriClient;
  const proxies: Proxy[] = [];

  /** The whole config file: GC off (images must stay), then `body`. */
  const writeConfig = (body: string, top = "") =>
    writeFileSync(d.configPath, `version = 2\n${top}${GC_OFF_CONFIG}${body}`);
  const mirrorTo = (host: string) => `[${CRI}.registry.mirrors."${FAKE}"]\n  endpoint = ["http://${host}"]\n`;
  const reload = () => conn.client(Config).reload({}, { timeoutMs: 30_000 });
  /** The digest `ref` points at in namespace `ns`. */
  const digestIn = async (ns: string, ref = REF) => {
    const out = ok(await ctr(d.address, ["-n", ns, "images", "ls"]));
    return out
      .split("\n")
      .find((l) => l.startsWith(`${ref} `))
      ?.split(/\s+/)[2];
  };
  const change = (res: ReloadResponse, key: string) => res.changes.find((c) => c.key === key);
  // a failing call logs a debug line ("request failed"), which level=info hides
  const failCall = async () => {
    const r = await ctr(d.address, ["containers", "info", "no-such-container-for-reload"]);
    assert.notEqual(r.code, 0);
  };
  const debugLines = (from: number) =>
    d
      .logs()
      .slice(from)
      .split("\n")
      .filter((l) => l.includes("level=debug"));

  before(async () => {
    tmp = await makeTempDir("config-reload");
    // Two registries holding different images under the same name: a pull that mixed the two
    // configs would ask one registry for the other's blobs and fail.
    imgA = busyboxImageWith({ Cmd: ["echo", "a"] }, { name: "which", data: "A\n" });
    imgB = busyboxImageWith({ Cmd: ["echo", "b"] }, { name: "which", data: "B\n" });
    [regA, regB] = await Promise.all([startRegistry(), startRegistry()]);
    await Promise.all([pushImage(regA.url, REPO, "1", imgA), pushImage(regB.url, REPO, "1", imgB)]);
    d = await startBerthd({ config: `version = 2\n${GC_OFF_CONFIG}${mirrorTo(regA.host)}` });
    conn = new Connection(d.address);
    cri = criClient(d.address);
  });

  after(async () => {
    cri?.close();
    conn?.close();
    await d?.cleanup();
    await Promise.all(proxies.map((p) => p.close()));
    await Promise.all([regA?.cleanup(), regB?.cleanup()]);
    if (tmp) await removeTempDir(tmp);
  });

  it("pulls in flight during a reload keep the config they started with; later pulls use the new one", async () => {
    // config_path trees (hosts.toml), one per registry, each behind a proxy that can hold requests
    const [pa, pb] = await Promise.all([startProxy(regA), startProxy(regB)]);
    proxies.push(pa, pb);
    const certs = (name: string, host: string) => {
      const dir = join(tmp, name);
      mkdirSync(join(dir, FAKE), { recursive: true });
      writeFileSync(
        join(dir, FAKE, "hosts.toml"),
        `[host."http://${host}"]\n  capabilities = ["pull", "resolve"]\n`,
      );
      return dir;
    };
    const certsA = certs("certs-a", pa.host);
    const certsB = certs("certs-b", pb.host);
    const configPath = (dir: string) => `[${CRI}.registry]\n  config_path = ${JSON.stringify(dir)}\n`;

    writeConfig(configPath(certsA));
    const first = await reload();
    assert.equal(change(first, `${CRI}.registry.config_path`)?.apply, Apply.LIVE, show(first));
    assert.equal(change(first, MIRROR_KEY)?.apply, Apply.LIVE);

    // four pulls, each held at its first request to A: all four are in flight
    pa.hold();
    const before = [0, 1, 2, 3].map((i) => berth(d.address, ["-n", `conc-${i}`, "images", "pull", REF]));
    await until("four pulls waiting at registry A", () => pa.held() >= 4);

    writeConfig(configPath(certsB));
    const second = await reload();
    const cp = change(second, `${CRI}.registry.config_path`);
    assert.equal(cp?.apply, Apply.LIVE);
    assert.equal(cp?.oldValue, JSON.stringify(certsA));
    assert.equal(cp?.newValue, JSON.stringify(certsB));

    // four more while the first four still wait, then let A answer
    const later = [4, 5, 6, 7].map((i) => berth(d.address, ["-n", `conc-${i}`, "images", "pull", REF]));
    const afterResults = await Promise.all(later);
    pa.release();
    const beforeResults = await Promise.all(before);
    for (const [i, r] of [...beforeResults, ...afterResults].entries()) ok(r, `pull ${i}`);

    for (const i of [0, 1, 2, 3]) assert.equal(await digestIn(`conc-${i}`), imgA.target.digest, `pull ${i}`);
    for (const i of [4, 5, 6, 7]) assert.equal(await digestIn(`conc-${i}`), imgB.target.digest, `pull ${i}`);
    // no request crossed over: A never saw B's blobs, B never A's
    const digestsOf = (img: BuiltImage) => img.blobs.map((b) => b.digest);
    for (const dg of digestsOf(imgB))
      assert.ok(!pa.requests.some((u) => u.includes(dg)), `A asked for ${dg}`);
    for (const dg of digestsOf(imgA))
      assert.ok(!pb.requests.some((u) => u.includes(dg)), `B asked for ${dg}`);
  });

  it("a changed registry mirror serves the next pull, daemon-side and CRI, with the old mirror stopped", async () => {
    writeConfig(mirrorTo(regA.host));
    await reload();
    ok(await berth(d.address, ["-n", "mirror-1", "images", "pull", REF]), "pull through mirror A");
    assert.equal(await digestIn("mirror-1"), imgA.target.digest);

    writeConfig(mirrorTo(regB.host));
    const res = await reload();
    const m = change(res, MIRROR_KEY);
    assert.equal(m?.apply, Apply.LIVE, show(res.changes));
    assert.equal(m?.oldValue, `["http://${regA.host}"]`);
    assert.equal(m?.newValue, `["http://${regB.host}"]`);
    assert.ok(!res.changes.some((c) => c.apply === Apply.NEEDS_RESTART), show(res.changes));

    await regA.cleanup(); // the old mirror is gone: only B can serve the pulls below
    ok(await berth(d.address, ["-n", "mirror-2", "images", "pull", REF]), "pull through mirror B");
    assert.equal(await digestIn("mirror-2"), imgB.target.digest);
    const pulled = await cri.image.pullImage({ image: { image: REF } });
    const criImage = await cri.image.imageStatus({ image: { image: REF } });
    assert.equal(criImage.image?.id, pulled.imageRef);
    assert.ok(
      criImage.image?.repoDigests.some((r) => r.endsWith(imgB.target.digest)),
      show(criImage),
    );
  });

  it("SIGHUP reloads as the RPC does: the log level changes, debug lines appear after", async () => {
    const start = d.logs().length;
    await failCall();
    assert.deepEqual(debugLines(start), [], "no debug lines at level info");

    writeConfig(`${mirrorTo(regB.host)}[debug]\n  level = "debug"\n`);
    const mark = d.logs().length;
    process.kill(d.pid, "SIGHUP");
    await until("the SIGHUP reload", () => /msg="config reloaded" source=SIGHUP/.test(d.logs().slice(mark)));
    await failCall();
    assert.ok(
      debugLines(mark).some((l) => l.includes('msg="request failed"')),
      d.logs().slice(mark),
    );

    writeConfig(mirrorTo(regB.host));
    const res = await reload();
    assert.equal(change(res, "debug.level")?.newValue, '""');
    const quiet = d.logs().length;
    await failCall();
    assert.deepEqual(debugLines(quiet), [], "back at the flag's level (info)");
    assert.ok(d.running());
  });

  it("a broken or invalid file changes nothing; the error names file, line and key", async () => {
    const good = mirrorTo(regB.host);
    const attempt = async (body: string, re: RegExp) => {
      writeConfig(body);
      await assert.rejects(reload(), (err: Error) => {
        assert.match(err.message, re);
        return true;
      });
      const cli = await berth(d.address, ["config", "reload"]);
      assert.notEqual(cli.code, 0);
      assert.match(cli.stderr, re);
    };
    const file = d.configPath.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    // each file would also turn on debug logging and switch the mirror back to A
    const alsoChanges = `[debug]\n  level = "debug"\n${mirrorTo("127.0.0.1:1")}`;
    const gcLines = GC_OFF_CONFIG.split("\n").length;
    // TOML syntax: an unterminated string (line numbers count the GC lines written first)
    await attempt(
      `${alsoChanges}[${CRI}]\n  sandbox_image = "example.com/pause:3\n`,
      new RegExp(`${file}:${gcLines + 6}: ${CRI.replace(/[."]/g, "\\$&")}\\.sandbox_image: invalid TOML`),
    );
    // a wrong type
    await attempt(
      `${alsoChanges}[${CRI}]\n  max_container_log_line_size = "big"\n`,
      new RegExp(
        `${file}:${gcLines + 6}: ${CRI.replace(/[."]/g, "\\$&")}\\.max_container_log_line_size: expected integer, got string`,
      ),
    );
    // the right type, a value the GC plugin refuses
    await attempt(
      `${alsoChanges}[${CRI}]\n  stream_idle_timeout = "soon"\n`,
      new RegExp(
        `${file}:${gcLines + 6}: ${CRI.replace(/[."]/g, "\\$&")}\\.stream_idle_timeout: invalid duration "soon"`,
      ),
    );
    // nothing of the three applied: still info, still mirror B
    const mark = d.logs().length;
    const r = await ctr(d.address, ["containers", "info", "no-such-container-for-reload"]);
    assert.notEqual(r.code, 0);
    assert.ok(!d.logs().slice(mark).includes("level=debug"), d.logs().slice(mark));
    ok(await berth(d.address, ["-n", "after-broken", "images", "pull", REF]), "pull through mirror B still");
    assert.equal(await digestIn("after-broken"), imgB.target.digest);
    // and the good file reloads with no change pending
    writeConfig(good);
    assert.deepEqual((await reload()).changes, []);
  });

  it("a change of root is reported as needing a restart, in the response and the log, and not applied", async () => {
    const elsewhere = join(tmp, "elsewhere");
    // with a credential in the same file: it must never come back, in the answer or the log
    const auth = `[${CRI}.registry.configs."creds.example".auth]\n  password = "reload-s3cret"\n`;
    writeConfig(`${mirrorTo(regB.host)}${auth}`, `root = ${JSON.stringify(elsewhere)}\n`);
    const mark = d.logs().length;
    const cli = ok(await berth(d.address, ["config", "reload"]));
    assert.match(cli, /registry\.configs\."creds\.example"\.auth\.password\s+applied\s+-\s+"\[redacted\]"/);
    assert.ok(!`${cli}${d.logs()}`.includes("reload-s3cret"), "the password is never printed");
    const line = cli.split("\n").find((l) => l.startsWith("root "));
    assert.ok(line, cli);
    assert.deepEqual(line.split(/\s+/), ["root", "restart", '"/var/lib/berth"', JSON.stringify(elsewhere)]);
    assert.match(
      d.logs().slice(mark),
      /level=warning msg="config change needs a restart to take effect" key=root/,
    );
    // reported again by every reload until berthd restarts
    const res = await reload();
    assert.equal(change(res, "root")?.apply, Apply.NEEDS_RESTART);
    const json = JSON.parse(ok(await berth(d.address, ["config", "reload", "--format", "json"])));
    assert.deepEqual(json.changes, [
      { key: "root", apply: "restart", old: '"/var/lib/berth"', new: JSON.stringify(elsewhere) },
    ]);
    // the daemon still works on its root
    ok(await ctr(d.address, ["version"]));
    ok(await berth(d.address, ["-n", "root-check", "images", "pull", REF]));
    assert.equal(await digestIn("root-check"), imgB.target.digest);
    writeConfig(mirrorTo(regB.host));
    await reload();
  });

  it("publishes /config/reload with the keys applied and those waiting for a restart", async () => {
    const ac = new AbortController();
    const got: Envelope[] = [];
    const stream = conn.client(Events).subscribe({ filters: ['topic~="^/config/"'] }, { signal: ac.signal });
    const pump = (async () => {
      try {
        for await (const e of stream) got.push(e);
      } catch {
        // aborted
      }
    })();
    try {
      // a marker event proves the subscription is live before the reload
      const events = conn.client(Events);
      for (let i = 0; i < 100 && !got.some((e) => e.topic === "/config/mark"); i++) {
        await events.publish(
          { topic: "/config/mark", event: anyPack(ConfigReloadedSchema, create(ConfigReloadedSchema, {})) },
          { namespace: "default" },
        );
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(
        got.some((e) => e.topic === "/config/mark"),
        "subscribed",
      );
      writeConfig(
        `${mirrorTo(regB.host)}[${CRI}]\n  sandbox_image = "example.com/pause:9"\n`,
        "oom_score = -1\n",
      );
      await reload();
      await until("the /config/reload event", () => got.some((e) => e.topic === "/config/reload"));
      const e = got.find((x) => x.topic === "/config/reload")!;
      assert.equal(e.namespace, "default");
      const body = anyUnpack(e.event!, ConfigReloadedSchema);
      assert.ok(body, e.event?.typeUrl);
      assert.deepEqual(body.applied, [`${CRI}.sandbox_image`]);
      assert.deepEqual(body.needsRestart, ["oom_score"]);
    } finally {
      ac.abort();
      await pump;
      writeConfig(mirrorTo(regB.host));
      await reload();
    }
  });

  it("[metrics] address moves live; a taken address fails the reload and rolls back what it applied", async () => {
    const scrape = async (port: number) => {
      try {
        const r = await fetch(`http://127.0.0.1:${port}/v1/metrics`);
        await r.text();
        return r.status;
      } catch {
        return 0;
      }
    };
    const metricsAt = (port: number) => `[metrics]\n  address = "127.0.0.1:${port}"\n`;
    const p1 = await freePort();
    writeConfig(`${mirrorTo(regB.host)}${metricsAt(p1)}`);
    assert.equal(change(await reload(), "metrics.address")?.apply, Apply.LIVE);
    assert.equal(await scrape(p1), 200);

    // the port is taken: the log level change in the same file is rolled back too
    const blocker = createNetServer();
    await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", r));
    try {
      const taken = (blocker.address() as AddressInfo).port;
      writeConfig(`${mirrorTo(regB.host)}[debug]\n  level = "debug"\n${metricsAt(taken)}`);
      await assert.rejects(reload(), /applying metrics listener: .*EADDRINUSE.*; nothing changed/);
    } finally {
      blocker.close();
    }
    const mark = d.logs().length;
    await failCall();
    assert.deepEqual(debugLines(mark), [], "the log level was rolled back");
    assert.equal(await scrape(p1), 200, "the old listener still serves");

    const p2 = await freePort();
    writeConfig(`${mirrorTo(regB.host)}${metricsAt(p2)}`);
    const res = await reload();
    assert.equal(change(res, "metrics.address")?.oldValue, `"127.0.0.1:${p1}"`);
    assert.equal(await scrape(p2), 200);
    assert.equal(await scrape(p1), 0, "the old listener is closed");
    writeConfig(mirrorTo(regB.host));
    await reload();
    assert.equal(await scrape(p2), 0, "no metrics address: no listener");
  });

  it("CNI conf_dir changes live; files written into it are loaded as they appear", async () => {
    const dirA = join(tmp, "cni-a");
    const dirB = join(tmp, "cni-b");
    mkdirSync(dirA, { recursive: true });
    mkdirSync(dirB, { recursive: true });
    const conflist = (name: string) =>
      JSON.stringify({
        cniVersion: "0.4.0",
        name,
        plugins: [{ type: "bridge", bridge: "rl0", ipam: { type: "host-local", subnet: "10.250.0.0/24" } }],
      });
    writeFileSync(join(dirB, "10-b.conflist"), conflist("net-b"));
    const cniAt = (dir: string) => `[${CRI}.cni]\n  conf_dir = ${JSON.stringify(dir)}\n`;
    const network = async () => {
      const st = await cri.runtime.status({ verbose: true });
      const cond = st.status?.conditions.find((c) => c.type === "NetworkReady");
      return {
        ready: cond?.status,
        message: cond?.message ?? "",
        cni: JSON.parse(st.info.cniconfig ?? "{}"),
      };
    };

    writeConfig(`${mirrorTo(regB.host)}${cniAt(dirA)}`);
    assert.equal(change(await reload(), `${CRI}.cni.conf_dir`)?.apply, Apply.LIVE);
    const a = await network();
    assert.equal(a.ready, false);
    assert.ok(a.message.includes(`no network config found in ${dirA}`), a.message);

    writeConfig(`${mirrorTo(regB.host)}${cniAt(dirB)}`);
    await reload();
    const b = await network();
    assert.equal(b.ready, true, b.message);
    assert.equal(b.cni.confDir, dirB);
    assert.deepEqual(
      b.cni.networks.map((n: { name: string }) => n.name),
      ["net-b"],
    );

    // no call into the CRI plugin: the watcher on the new conf_dir loads a file written there
    const mark = d.logs().length;
    writeFileSync(join(dirB, "05-first.conflist"), conflist("net-first"));
    await until("the watcher to load 05-first.conflist", () =>
      /msg="loaded CNI network configs".*networks=net-first/.test(d.logs().slice(mark)),
    );
    writeConfig(mirrorTo(regB.host));
    await reload();
  });
});
