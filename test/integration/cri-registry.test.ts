// Issue 4 item 3/4: the CRI plugin's `registry` table in config.toml (credentials in
// `configs."host".auth`, legacy `mirrors`, `config_path`) is honoured by berthd's daemon-side
// pulls when the client names no hosts dir; a table containerd would refuse makes the CRI plugin
// report an error while the daemon keeps serving.
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { createServer, request as httpRequest } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { berth, ctr, ok } from "../helpers/ctr.js";
import { type Daemon, startBerthd } from "../helpers/daemons.js";
import { registryWithBusybox } from "../helpers/fixtures.js";
import type { BuiltImage } from "../helpers/images.js";
import { htpasswdLine, type Registry, startRegistry } from "../helpers/registry.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const REPO = "test/busybox";
const CRI = '[plugins."io.containerd.grpc.v1.cri".registry]';
// A name under .invalid never resolves: if a mirror were skipped, nothing could leave loopback.
const FAKE = "registry.invalid";

const criLine = (out: string) =>
  out
    .split("\n")
    .find((l) => /^io\.containerd\.grpc\.v1\s+cri\s/.test(l))
    ?.trim()
    .split(/\s+/);

describe("CRI registry config in config.toml drives daemon-side pulls", () => {
  let open: Registry;
  let locked: Registry;
  let single: BuiltImage;
  let tmp: string;
  const daemons: Daemon[] = [];

  before(async () => {
    tmp = await makeTempDir("cri-registry");
    ({ reg: open, single } = await registryWithBusybox(REPO));
    const pw = join(tmp, "htpasswd");
    writeFileSync(pw, `${htpasswdLine("carol", "cri-s3cret")}\n`);
    locked = await startRegistry({ htpasswd: pw });
  });

  after(async () => {
    await Promise.all(daemons.map((d) => d.cleanup()));
    await Promise.all([open?.cleanup(), locked?.cleanup()]);
    if (tmp) await removeTempDir(tmp);
  });

  const start = async (config: string) => {
    const d = await startBerthd({ config: `version = 2\n${config}` });
    daemons.push(d);
    return d;
  };

  it("uses registry.configs auth and registry.mirrors; the CRI plugin loads ok with them", async () => {
    const d = await start(
      [
        CRI,
        `  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."${FAKE}"]`,
        `    endpoint = ["http://${open.host}"]`,
        `  [plugins."io.containerd.grpc.v1.cri".registry.configs."${locked.host}".auth]`,
        '    username = "carol"',
        '    password = "cri-s3cret"',
        "",
      ].join("\n"),
    );
    const plugins = ok(await ctr(d.address, ["plugins", "ls"]));
    assert.deepEqual(criLine(plugins)?.slice(0, 4), ["io.containerd.grpc.v1", "cri", "linux/amd64", "ok"]);

    // Mirror: a registry name nobody can reach, served by the mirror listed for it.
    const viaMirror = `${FAKE}/${REPO}:1`;
    ok(await berth(d.address, ["images", "pull", viaMirror]), "pull through the configured mirror");
    const ls = ok(await ctr(d.address, ["images", "ls", "-q"]));
    assert.ok(ls.split("\n").includes(viaMirror), ls);
    const check = ok(await ctr(d.address, ["images", "check", `name==${viaMirror}`]));
    assert.match(check, /\scomplete \(\d+\/\d+\)/);
    assert.ok(check.includes(single.target.digest), check);

    // Credentials: push there with --user, then pull in another namespace with no --user at all.
    const dst = `${locked.host}/private/busybox:1`;
    ok(
      await berth(d.address, [
        "images",
        "push",
        "--plain-http",
        "--user",
        "carol:cri-s3cret",
        dst,
        viaMirror,
      ]),
    );
    const r = await berth(d.address, ["-n", "cri-auth", "images", "pull", "--plain-http", dst]);
    ok(r, "pull with credentials from config.toml");
    assert.ok(!`${r.stdout}${r.stderr}${d.logs()}`.includes("cri-s3cret"), "the password is never printed");
    const ls2 = ok(await ctr(d.address, ["-n", "cri-auth", "images", "ls", "-q"]));
    assert.ok(ls2.split("\n").includes(dst), ls2);
  });

  it("without credentials for the host the pull fails with a clear 401", async () => {
    const d = await start("");
    const dst = `${locked.host}/private/busybox:1`;
    const r = await berth(d.address, ["images", "pull", "--plain-http", dst]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /401|unauthorized|authenticat/i);
  });

  it("reads hosts.toml under registry.config_path, and edits apply to the next pull", async () => {
    const certs = join(tmp, "certs.d");
    mkdirSync(join(certs, FAKE), { recursive: true });
    const hostsToml = join(certs, FAKE, "hosts.toml");
    writeFileSync(hostsToml, `[host."http://127.0.0.1:1"]\n  capabilities = ["pull", "resolve"]\n`);
    const d = await start(`${CRI}\n  config_path = ${JSON.stringify(certs)}\n`);
    const ref = `${FAKE}/${REPO}:1`;
    const down = await berth(d.address, ["images", "pull", ref]);
    assert.notEqual(down.code, 0, "the only configured host refuses connections");
    writeFileSync(hostsToml, `[host."http://${open.host}"]\n  capabilities = ["pull", "resolve"]\n`);
    ok(await berth(d.address, ["images", "pull", ref]), "pull after editing hosts.toml");
    assert.ok(
      ok(await ctr(d.address, ["images", "ls", "-q"]))
        .split("\n")
        .includes(ref),
    );
  });

  it("registry.headers go with every request to the registry", async () => {
    // a pass-through proxy in front of the registry that notes the header on each request
    const seen: (string | undefined)[] = [];
    const proxy = createServer((req, res) => {
      seen.push(req.headers["x-team"] as string | undefined);
      const up = httpRequest(
        `${open.url}${req.url}`,
        { method: req.method, headers: { ...req.headers, host: open.host } },
        (r) => {
          res.writeHead(r.statusCode ?? 502, r.headers);
          r.pipe(res);
        },
      );
      up.on("error", () => res.destroy());
      req.pipe(up);
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    try {
      const proxyHost = `127.0.0.1:${(proxy.address() as AddressInfo).port}`;
      const d = await start(
        [
          CRI,
          `  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."${FAKE}"]`,
          `    endpoint = ["http://${proxyHost}"]`,
          `  [plugins."io.containerd.grpc.v1.cri".registry.headers]`,
          '    X-Team = ["blue"]',
          "",
        ].join("\n"),
      );
      ok(await berth(d.address, ["images", "pull", `${FAKE}/${REPO}:1`]), "pull through the proxy");
      assert.ok(seen.length >= 3, `requests seen: ${seen.length}`);
      assert.deepEqual([...new Set(seen)], ["blue"], "every request carried X-Team: blue");
    } finally {
      proxy.closeAllConnections();
      await new Promise<void>((r) => proxy.close(() => r()));
    }
  });

  it("mirrors together with config_path: the CRI plugin errors as containerd's does, the daemon serves", async () => {
    const d = await start(
      [
        CRI,
        `  config_path = ${JSON.stringify(join(tmp, "none"))}`,
        `  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."${FAKE}"]`,
        `    endpoint = ["http://${open.host}"]`,
        "",
      ].join("\n"),
    );
    const plugins = ok(await ctr(d.address, ["plugins", "ls"]));
    assert.equal(criLine(plugins)?.[3], "error");
    const detailed = ok(await ctr(d.address, ["plugins", "ls", "-d", "id==cri"]));
    assert.match(detailed, /`mirrors` cannot be set when `config_path` is provided/);
    ok(await ctr(d.address, ["version"]));
  });
});
