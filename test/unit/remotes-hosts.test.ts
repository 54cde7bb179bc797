// Registry host configuration: hosts.toml (certs.d layout, containerd's lookup order, the
// _default dir, Docker cert files), the legacy CRI mirrors/configs tables, and re-reading on edit.
import assert from "node:assert/strict";
import { mkdir, utimes, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { BerthError } from "../../src/base/errdefs.js";
import { createLogger } from "../../src/base/log.js";
import { parseChallenges } from "../../src/core/remotes/auth.js";
import { hostDirCandidates, legacyCredentials, resolveHosts } from "../../src/core/remotes/hosts.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

let root: string;
before(async () => {
  root = await makeTempDir("hosts");
});
after(async () => {
  await removeTempDir(root);
});

async function hostsToml(dir: string, text: string) {
  await mkdir(path.join(root, dir), { recursive: true });
  await writeFile(path.join(root, dir, "hosts.toml"), text);
}

const brief = (hs: Awaited<ReturnType<typeof resolveHosts>>) =>
  hs.map((h) => `${h.scheme}://${h.host}${h.path} ${h.capabilities.join(",")}`);

describe("hosts without configuration", () => {
  it("docker.io goes to registry-1.docker.io over https", async () => {
    assert.deepEqual(brief(await resolveHosts("docker.io")), [
      "https://registry-1.docker.io/v2 pull,resolve,push",
    ]);
  });
  it("localhost and loopback addresses default to plain http, others to https", async () => {
    assert.deepEqual(brief(await resolveHosts("127.0.0.1:5000")), [
      "http://127.0.0.1:5000/v2 pull,resolve,push",
    ]);
    assert.deepEqual(brief(await resolveHosts("localhost:5000")), [
      "http://localhost:5000/v2 pull,resolve,push",
    ]);
    assert.deepEqual(brief(await resolveHosts("[::1]:5000")), ["http://[::1]:5000/v2 pull,resolve,push"]);
    assert.deepEqual(brief(await resolveHosts("reg.example:5000")), [
      "https://reg.example:5000/v2 pull,resolve,push",
    ]);
    assert.deepEqual(brief(await resolveHosts("reg.example:5000", { plainHttp: true })), [
      "http://reg.example:5000/v2 pull,resolve,push",
    ]);
  });
});

describe("hosts.toml", () => {
  it("looks up host_port_, then host:port, then _default", () => {
    assert.deepEqual(hostDirCandidates("/c", "r.io:5000"), ["/c/r.io_5000_", "/c/r.io:5000", "/c/_default"]);
    assert.deepEqual(hostDirCandidates("/c", "r.io"), ["/c/r.io", "/c/_default"]);
  });

  it("lists mirrors in file order, then the upstream, with TLS, headers and capabilities", async () => {
    await hostsToml(
      "docker.io",
      `server = "https://registry-1.docker.io"
[host."https://public-mirror.example.com"]
  capabilities = ["pull"]
[host."http://10.0.0.5:5000/some/prefix"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  ca = "docker-mirror.crt"
  client = [["client.cert", "client.key"], "/abs/both.pem"]
  [host."http://10.0.0.5:5000/some/prefix".header]
    x-custom = "one"
    x-multi = ["a", "b"]
[host."https://raw.example.com/api"]
  override_path = true
  ca = ["/etc/a.pem", "b.pem"]
`,
    );
    const hs = await resolveHosts("docker.io", { configPaths: [root] });
    assert.deepEqual(brief(hs), [
      "https://public-mirror.example.com/v2 pull",
      "http://10.0.0.5:5000/some/prefix/v2 pull,resolve",
      "https://raw.example.com/api pull,resolve,push",
      "https://registry-1.docker.io/v2 pull,resolve,push",
    ]);
    const dir = path.join(root, "docker.io");
    assert.deepEqual(hs[1]!.tls, {
      skipVerify: true,
      caFiles: [path.join(dir, "docker-mirror.crt")],
      clientPairs: [
        [path.join(dir, "client.cert"), path.join(dir, "client.key")],
        ["/abs/both.pem", ""],
      ],
    });
    assert.deepEqual(hs[1]!.headers, { "x-custom": ["one"], "x-multi": ["a", "b"] });
    assert.deepEqual(hs[2]!.tls.caFiles, ["/etc/a.pem", path.join(dir, "b.pem")]);
  });

  it("without server, the upstream is still tried last; host:port dirs use _port_ first", async () => {
    await hostsToml("reg.io:5000", `[host."https://mirror.io"]\n  capabilities = ["pull", "resolve"]\n`);
    assert.deepEqual(brief(await resolveHosts("reg.io:5000", { configPaths: [root] })), [
      "https://mirror.io/v2 pull,resolve",
      "https://reg.io:5000/v2 pull,resolve,push",
    ]);
    await hostsToml("reg.io_5000_", `server = "https://other.io"\n`);
    assert.deepEqual(brief(await resolveHosts("reg.io:5000", { configPaths: [root] })), [
      "https://other.io/v2 pull,resolve,push",
    ]);
  });

  it("falls back to _default, and the server's scheme decides http", async () => {
    await hostsToml("_default", `server = "http://127.0.0.1:1234"\n`);
    assert.deepEqual(brief(await resolveHosts("quay.io", { configPaths: [root] })), [
      "http://127.0.0.1:1234/v2 pull,resolve,push",
    ]);
  });

  it("reads Docker cert files when there is no hosts.toml", async () => {
    const dir = path.join(root, "certs.example");
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, "ca.crt"), "x");
    await writeFile(path.join(dir, "client.cert"), "x");
    await writeFile(path.join(dir, "client.key"), "x");
    const [h] = await resolveHosts("certs.example", { configPaths: [root] });
    assert.equal(h!.host, "certs.example");
    assert.deepEqual(h!.tls.caFiles, [path.join(dir, "ca.crt")]);
    assert.deepEqual(h!.tls.clientPairs, [[path.join(dir, "client.cert"), path.join(dir, "client.key")]]);
  });

  it("re-reads the file when it changes", async () => {
    await hostsToml("edit.io", `server = "https://one.io"\n`);
    assert.equal((await resolveHosts("edit.io", { configPaths: [root] }))[0]!.host, "one.io");
    await hostsToml("edit.io", `server = "https://two.io"\n`);
    const later = new Date(Date.now() + 5000);
    await utimes(path.join(root, "edit.io", "hosts.toml"), later, later);
    assert.equal((await resolveHosts("edit.io", { configPaths: [root] }))[0]!.host, "two.io");
  });

  it("rejects bad values with the file named", async () => {
    await hostsToml("bad.io", `[host."https://m.io"]\n  capabilities = ["pull", "fly"]\n`);
    await assert.rejects(resolveHosts("bad.io", { configPaths: [root] }), (err: unknown) => {
      assert.ok(err instanceof BerthError && err.kind === "invalid argument");
      assert.match(err.message, /bad\.io\/hosts\.toml: unknown capability "fly"/);
      return true;
    });
    await hostsToml("bad2.io", `server = [1`);
    await assert.rejects(resolveHosts("bad2.io", { configPaths: [root] }), /cannot parse TOML/);
  });
});

describe("legacy CRI registry config", () => {
  const legacy = {
    mirrors: {
      "docker.io": { endpoint: ["https://mirror.a", "mirror.b:5000", "localhost:5001"] },
      "*": { endpoint: ["https://all.mirror"] },
      "self.io": { endpoint: ["https://self.io"] },
    },
    configs: {
      "mirror.b:5000": {
        tls: { insecure_skip_verify: true, ca_file: "/ca.pem", cert_file: "/c.pem", key_file: "/k.pem" },
        auth: { username: "u", password: "p" },
      },
      "tok.io": { auth: { identitytoken: "itok" } },
      "b64.io": { auth: { auth: Buffer.from("alice:s3cret").toString("base64") } },
    },
  };
  it("mirror endpoints in order, then the upstream", async () => {
    const hs = await resolveHosts("docker.io", { legacy });
    assert.deepEqual(brief(hs), [
      "https://mirror.a/v2 pull,resolve",
      "https://mirror.b:5000/v2 pull,resolve",
      "http://localhost:5001/v2 pull,resolve",
      "https://registry-1.docker.io/v2 pull,resolve",
    ]);
    assert.deepEqual(hs[1]!.tls, {
      skipVerify: true,
      caFiles: ["/ca.pem"],
      clientPairs: [["/c.pem", "/k.pem"]],
    });
  });
  it("the * mirror applies to other registries; an endpoint equal to the host is not repeated", async () => {
    assert.deepEqual(brief(await resolveHosts("quay.io", { legacy })), [
      "https://all.mirror/v2 pull,resolve",
      "https://quay.io/v2 pull,resolve",
    ]);
    assert.deepEqual(brief(await resolveHosts("self.io", { legacy })), ["https://self.io/v2 pull,resolve"]);
  });
  it("credentials from username/password, identity token, or base64 auth", () => {
    assert.deepEqual(legacyCredentials(legacy, "mirror.b:5000"), { username: "u", password: "p" });
    assert.deepEqual(legacyCredentials(legacy, "tok.io"), { identityToken: "itok" });
    assert.deepEqual(legacyCredentials(legacy, "b64.io"), { username: "alice", password: "s3cret" });
    assert.equal(legacyCredentials(legacy, "none.io"), undefined);
  });
});

describe("WWW-Authenticate parsing", () => {
  it("reads Bearer and Basic challenges with quoted and bare params", () => {
    assert.deepEqual(
      parseChallenges(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push", Basic realm=x',
      ),
      [
        {
          scheme: "bearer",
          params: {
            realm: "https://auth.example/token",
            service: "registry.example",
            scope: "repository:a/b:pull,push",
          },
        },
        { scheme: "basic", params: { realm: "x" } },
      ],
    );
    assert.deepEqual(parseChallenges(['Basic realm="Registry Realm"']), [
      { scheme: "basic", params: { realm: "Registry Realm" } },
    ]);
  });
});

describe("logger redaction", () => {
  it("never writes credentials", () => {
    const lines: string[] = [];
    for (const format of ["text", "json"] as const) {
      const log = createLogger({ level: "debug", format, write: (l) => lines.push(l) });
      log.info("request with Bearer abc.def.ghi", {
        headers: { Authorization: "Basic dTpw", accept: "x" },
        password: "hunter2",
        auth: { username: "u", password: "p2" },
        note: "token Basic Zm9vOmJhcg==",
      });
    }
    const all = lines.join("\n");
    for (const secret of ["abc.def.ghi", "dTpw", "hunter2", "p2", "Zm9vOmJhcg=="])
      assert.ok(!all.includes(secret), all);
    assert.match(all, /redacted/);
    assert.match(all, /accept/);
  });
});
