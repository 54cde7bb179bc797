import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { loadConfig } from "../../src/config/config.js";
import { criHostsOptions, criRegistrySettings } from "../../src/core/remotes/cri-registry.js";
import { resolveHosts } from "../../src/core/remotes/hosts.js";
import { criDefaults } from "../../src/plugins/cri.js";

const dir = mkdtempSync(join(tmpdir(), "berth-cri-registry-"));
after(() => rmSync(dir, { recursive: true, force: true }));

describe("CRI registry settings", () => {
  it("config_path excludes mirrors and configs.tls, with containerd's messages", () => {
    assert.throws(
      () =>
        criRegistrySettings({
          config_path: "/etc/containerd/certs.d",
          mirrors: { "docker.io": { endpoint: [] } },
        }),
      /`mirrors` cannot be set when `config_path` is provided/,
    );
    assert.throws(
      () =>
        criRegistrySettings({
          config_path: "/etc/containerd/certs.d",
          configs: { "r.example": { tls: { insecure_skip_verify: true } } },
        }),
      /`configs.tls` cannot be set when `config_path` is provided/,
    );
    // auth alone is fine with config_path, and still supplies credentials
    const s = criRegistrySettings({
      config_path: "/a:/b",
      configs: { "r.example": { auth: { username: "u", password: "p" } } },
    });
    assert.deepEqual(s.configPaths, ["/a", "/b"]);
    assert.equal(s.legacy, undefined);
    assert.deepEqual(s.credentials("r.example"), { username: "u", password: "p" });
    assert.equal(s.credentials("other.example"), undefined);
  });

  it("folds auths (keyed by URL) into configs (keyed by host) and warns about the deprecated tables", () => {
    const s = criRegistrySettings({
      auths: { "https://r.example:5000": { auth: Buffer.from("bob:pw:x").toString("base64") } },
      mirrors: { "docker.io": { endpoint: ["https://mirror.example"] } },
      headers: { "X-Team": ["a", "b"] },
    });
    assert.deepEqual(s.credentials("r.example:5000"), { username: "bob", password: "pw:x" });
    assert.deepEqual(s.headers, { "x-team": ["a", "b"] });
    assert.equal(s.warnings.length, 2);
    assert.ok(s.warnings.some((w) => w.includes("`auths` is deprecated")));
    assert.ok(s.warnings.some((w) => w.includes("`mirrors` is deprecated")));
  });

  it("rejects an auth string that is not base64 of user:password at load time", () => {
    assert.throws(
      () =>
        criRegistrySettings({
          configs: { "r.example": { auth: { auth: Buffer.from("nocolon").toString("base64") } } },
        }),
      /not base64 of user:password/,
    );
  });

  it("legacy mirrors give the mirror first, then the upstream", async () => {
    const s = criRegistrySettings({ mirrors: { "docker.io": { endpoint: ["https://mirror.example"] } } });
    const hosts = await resolveHosts("docker.io", criHostsOptions(s, false));
    assert.deepEqual(
      hosts.map((h) => `${h.scheme}://${h.host}${h.path}`),
      ["https://mirror.example/v2", "https://registry-1.docker.io/v2"],
    );
  });

  it("a kubelet-style config.toml with extra runtimes and registry hosts loads without warnings", () => {
    const p = join(dir, "k8s.toml");
    writeFileSync(
      p,
      `version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "crun"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
        BinaryName = "/usr/bin/crun"
        SystemdCgroup = true
  [plugins."io.containerd.grpc.v1.cri".registry.configs."r.example".auth]
    username = "u"
    password = "p"
  [plugins."io.containerd.grpc.v1.cri".registry.headers]
    X-Team = ["a"]
`,
    );
    const { config, warnings } = loadConfig(p, { "io.containerd.grpc.v1.cri": criDefaults() });
    assert.deepEqual(warnings, []);
    const cri = config.plugins["io.containerd.grpc.v1.cri"] as ReturnType<typeof criDefaults>;
    assert.equal(cri.containerd.runtimes.crun?.options.BinaryName, "/usr/bin/crun");
    assert.equal(cri.containerd.runtimes.runc?.runtime_type, "io.containerd.runc.v2", "defaults kept");
    assert.equal(cri.cni.bin_dir, "/opt/cni/bin");

    // a wrongly typed key in an added runtime is still an error naming it
    const bad = join(dir, "bad.toml");
    writeFileSync(
      bad,
      `version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]\n  runtime_type = 5\n`,
    );
    assert.throws(
      () => loadConfig(bad, { "io.containerd.grpc.v1.cri": criDefaults() }),
      /runtimes\.crun\.runtime_type: expected string/,
    );
  });
});
