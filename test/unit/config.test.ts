import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { parse } from "smol-toml";
import { ConfigError, defaultConfig, loadConfig, printConfig } from "../../src/config/config.js";
import { locateKey } from "../../src/config/locate.js";

const dir = mkdtempSync(join(tmpdir(), "berth-config-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const pluginDefaults = {
  "io.containerd.metadata.v1.bolt": { content_sharing_policy: "shared" },
  "io.containerd.grpc.v1.cri": {
    sandbox_image: "pause:3.6",
    registry: { mirrors: {}, config_path: "" },
    max_concurrent_downloads: 3,
  },
};

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe("config", () => {
  it("uses built-in defaults without a file", () => {
    const { config } = loadConfig(undefined, pluginDefaults);
    assert.equal(config.root, "/var/lib/berth");
    assert.equal(config.state, "/run/berth");
    assert.equal(config.grpc.address, "/run/berth/berth.sock");
    assert.equal(config.grpc.max_recv_message_size, 16 << 20);
    assert.equal(config.plugins["io.containerd.metadata.v1.bolt"]?.content_sharing_policy, "shared");
  });

  it("reads a containerd version-2 config unchanged", () => {
    const p = file(
      "v2.toml",
      `version = 2
root = "/tmp/r"
state = "/tmp/s"
oom_score = -999
[grpc]
  address = "/tmp/s/c.sock"
  uid = 1000
  gid = 1000
[debug]
  level = "debug"
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
      endpoint = ["https://mirror.example"]
`,
    );
    const { config, warnings } = loadConfig(p, pluginDefaults);
    assert.deepEqual(warnings, []);
    assert.equal(config.root, "/tmp/r");
    assert.equal(config.oom_score, -999);
    assert.equal(config.grpc.uid, 1000);
    assert.equal(config.grpc.max_send_message_size, 16 << 20, "unset keys keep defaults");
    const cri = config.plugins["io.containerd.grpc.v1.cri"] as Record<string, unknown>;
    assert.equal(cri.sandbox_image, "registry.k8s.io/pause:3.9");
    assert.equal(cri.max_concurrent_downloads, 3);
    assert.deepEqual((cri.registry as { mirrors: unknown }).mirrors, {
      "docker.io": { endpoint: ["https://mirror.example"] },
    });
  });

  it("names file, line and key for a wrong type", () => {
    const p = file("badtype.toml", `version = 2\nroot = "/x"\n\n[grpc]\n  address = "/s"\n  uid = "root"\n`);
    assert.throws(
      () => loadConfig(p, pluginDefaults),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.equal(err.line, 6);
        assert.equal(err.key, "grpc.uid");
        assert.match(err.message, /badtype\.toml:6: grpc\.uid: expected integer, got string/);
        return true;
      },
    );
  });

  it("names the line of a wrong type inside a plugin section", () => {
    const p = file(
      "badplugin.toml",
      `version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  max_concurrent_downloads = "three"\n`,
    );
    assert.throws(
      () => loadConfig(p, pluginDefaults),
      /badplugin\.toml:3: plugins\."io\.containerd\.grpc\.v1\.cri"\.max_concurrent_downloads: expected integer/,
    );
  });

  it("names the line of invalid TOML", () => {
    const p = file("syntax.toml", `version = 2\nroot = "/x"\n[grpc\naddress = 1\n`);
    assert.throws(
      () => loadConfig(p, pluginDefaults),
      (err: unknown) => err instanceof ConfigError && err.line === 3 && /invalid TOML/.test(err.message),
    );
  });

  it("warns about unknown keys and unknown plugins, naming them", () => {
    const p = file(
      "unknown.toml",
      `version = 2\nbogus = 1\n[grpc]\n  adress = "/x"\n[plugins."io.containerd.nope.v1.x"]\n  a = 1\n`,
    );
    const { warnings } = loadConfig(p, pluginDefaults);
    assert.equal(warnings.length, 3);
    assert.match(warnings[0]!, /unknown\.toml:2: unknown key bogus/);
    assert.match(warnings[1]!, /unknown\.toml:4: unknown key grpc\.adress/);
    assert.match(warnings[2]!, /unknown plugin "io\.containerd\.nope\.v1\.x"/);
  });

  it("refuses an unsupported version", () => {
    const p = file("v9.toml", "version = 9\n");
    assert.throws(() => loadConfig(p, pluginDefaults), /v9\.toml:1: version: unsupported config version 9/);
  });

  it("maps version-1 plugin ids to full keys", () => {
    const p = file("v1.toml", `[plugins.cri]\n  sandbox_image = "p:1"\n`);
    const { config } = loadConfig(p, pluginDefaults);
    assert.equal(
      (config.plugins["io.containerd.grpc.v1.cri"] as Record<string, unknown>).sandbox_image,
      "p:1",
    );
  });

  it("merges imports in order, later files winning, plugin lists accumulating", () => {
    const d = join(dir, "conf.d");
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, "10-a.toml"), `version = 2\nstate = "/a"\ndisabled_plugins = ["x.y"]\n`);
    writeFileSync(join(d, "20-b.toml"), `version = 2\nstate = "/b"\ndisabled_plugins = ["z.w"]\n`);
    const p = file(
      "main.toml",
      `version = 2\nimports = ["conf.d/*.toml"]\nroot = "/main"\nstate = "/main-state"\n`,
    );
    const { config, files } = loadConfig(p, pluginDefaults);
    assert.equal(files.length, 3);
    assert.equal(config.root, "/main");
    assert.equal(config.state, "/b");
    assert.deepEqual(config.disabled_plugins, ["x.y", "z.w"]);
    assert.deepEqual(config.imports, [join(d, "10-a.toml"), join(d, "20-b.toml")]);
  });

  it("prints a default config that parses back to the defaults", () => {
    const cfg = defaultConfig(pluginDefaults);
    const text = printConfig(cfg);
    assert.match(text, /\[plugins\."io\.containerd\.metadata\.v1\.bolt"\]/);
    assert.deepEqual(JSON.parse(JSON.stringify(parse(text))), JSON.parse(JSON.stringify(cfg)));
    const p = file("roundtrip.toml", text);
    const { config, warnings } = loadConfig(p, pluginDefaults);
    assert.deepEqual(warnings, []);
    assert.deepEqual(config, { ...cfg, imports: [] });
  });

  it("locates keys in tables, dotted keys and quoted keys", () => {
    const text = `a = 1\n[t]\n  b.c = 2\n[t."x.y"]\n  "q" = 3\n`;
    assert.equal(locateKey(text, ["a"]), 1);
    assert.equal(locateKey(text, ["t", "b", "c"]), 3);
    assert.equal(locateKey(text, ["t", "x.y", "q"]), 5);
    assert.equal(locateKey(text, ["t", "x.y"]), 4);
    assert.equal(locateKey(text, ["nope"]), undefined);
  });
});
