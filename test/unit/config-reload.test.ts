// Issue 12 item 1 (config reload), the parts without a daemon: what changed between two loads
// (live or needs-restart, credentials masked), where a bad key is in the files, the checks run on
// the whole new config, and the small reconfigure hooks of the GC scheduler and CNI manager.
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { APPLIED_KEYS, checkConfig } from "../../src/cmd/berthd/reload.js";
import { type Config, loadConfig } from "../../src/config/config.js";
import {
  ConfigKeyError,
  diffConfigs,
  isSecretPath,
  keyError,
  locateInFiles,
  tomlPath,
} from "../../src/config/diff.js";
import { isLiveKey, LIVE_KEYS } from "../../src/config/live-keys.js";
import { keyAtLine } from "../../src/config/locate.js";
import { CniManager } from "../../src/core/cni/manager.js";
import { GcScheduler, SCHEDULER_DEFAULTS } from "../../src/core/gc/scheduler.js";
import { allPlugins, pluginDefaults } from "../../src/plugins/all.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const CRI = "io.containerd.grpc.v1.cri";
const GC = "io.containerd.gc.v1.scheduler";
const defaults = pluginDefaults(allPlugins());

let tmp: string;
let n = 0;
/** Load a config file written with `text` (and optional imports, name → text). */
function load(text: string, imports: Record<string, string> = {}) {
  const dir = join(tmp, String(n++));
  mkdirSync(dir, { recursive: true });
  for (const [name, t] of Object.entries(imports)) writeFileSync(join(dir, name), t);
  const file = join(dir, "config.toml");
  writeFileSync(file, text);
  return loadConfig(file, defaults);
}
const cfgOf = (text: string) => load(text).config;

before(async () => {
  tmp = await makeTempDir("config-reload-unit");
});
after(async () => {
  await removeTempDir(tmp);
});

describe("diffConfigs", () => {
  it("reports nothing for the same text", () => {
    const t = `version = 2\n[debug]\n  level = "info"\n`;
    assert.deepEqual(diffConfigs(cfgOf(t), cfgOf(t)), []);
  });

  it("classifies live and needs-restart keys by live-keys.ts, with TOML paths", () => {
    const a = cfgOf(`version = 2\nroot = "/a"\n[debug]\n  level = "info"\n`);
    const b = cfgOf(
      [
        "version = 2",
        'root = "/b"',
        'disabled_plugins = ["io.containerd.snapshotter.v1.btrfs"]',
        "[debug]",
        '  level = "debug"',
        `[plugins."${CRI}"]`,
        '  sandbox_image = "example.com/pause:1"',
        `[plugins."${CRI}".registry.mirrors."registry.invalid"]`,
        '  endpoint = ["http://127.0.0.1:5000"]',
        `[plugins."${GC}"]`,
        "  mutation_threshold = 7",
        '  startup_delay = "1s"',
        "",
      ].join("\n"),
    );
    const byKey = new Map(diffConfigs(a, b).map((c) => [c.key, c]));
    assert.deepEqual(
      [...byKey.keys()].sort(),
      [
        "debug.level",
        "disabled_plugins",
        `plugins."${CRI}".registry.mirrors."registry.invalid".endpoint`,
        `plugins."${CRI}".sandbox_image`,
        `plugins."${GC}".mutation_threshold`,
        `plugins."${GC}".startup_delay`,
        "root",
      ].sort(),
    );
    const live = (k: string) => byKey.get(k)!.live;
    assert.equal(live("root"), false);
    assert.equal(live("disabled_plugins"), false);
    assert.equal(live(`plugins."${GC}".startup_delay`), false);
    assert.equal(live("debug.level"), true);
    assert.equal(live(`plugins."${CRI}".sandbox_image`), true);
    assert.equal(live(`plugins."${GC}".mutation_threshold`), true);
    assert.equal(live(`plugins."${CRI}".registry.mirrors."registry.invalid".endpoint`), true);
    const root = byKey.get("root")!;
    assert.equal(root.oldValue, '"/a"');
    assert.equal(root.newValue, '"/b"');
    const mirror = byKey.get(`plugins."${CRI}".registry.mirrors."registry.invalid".endpoint`)!;
    assert.equal(mirror.oldValue, "", "unset before");
    assert.equal(mirror.newValue, '["http://127.0.0.1:5000"]');
    assert.deepEqual(mirror.path, ["plugins", CRI, "registry", "mirrors", "registry.invalid", "endpoint"]);
  });

  it("never shows registry credentials, old or new", () => {
    const reg = (user: string, pw: string, token: string) =>
      [
        "version = 2",
        `[plugins."${CRI}".registry.configs."r.example".auth]`,
        `  username = "${user}"`,
        `  password = "${pw}"`,
        `[plugins."${CRI}".registry.auths."https://old.example"]`,
        `  auth = "${Buffer.from(`${user}:${pw}`).toString("base64")}"`,
        `[plugins."${CRI}".registry.headers]`,
        `  Authorization = ["Bearer ${token}"]`,
        '  X-Team = ["blue"]',
        "",
      ].join("\n");
    const changes = diffConfigs(
      cfgOf(reg("alice", "pw-one", "tok-one")),
      cfgOf(reg("bob", "pw-two", "tok-two")),
    );
    assert.equal(changes.length, 4, JSON.stringify(changes));
    const text = JSON.stringify(changes);
    for (const secret of ["alice", "bob", "pw-one", "pw-two", "tok-one", "tok-two", "YWxpY2U6cHctb25l"])
      assert.ok(!text.includes(secret), `${secret} is masked: ${text}`);
    for (const c of changes) {
      assert.equal(c.oldValue, '"[redacted]"');
      assert.equal(c.newValue, '"[redacted]"');
      assert.equal(c.live, true);
    }
    assert.equal(isSecretPath(["plugins", CRI, "registry", "headers", "X-Team"]), false);
    assert.equal(isSecretPath(["plugins", CRI, "registry", "mirrors", "x", "endpoint"]), false);
  });

  it("leaves out imports and version; keys brought by an import are reported", () => {
    const a = load("version = 2\n");
    const b = load(`version = 2\nimports = ["extra.toml"]\n`, {
      "extra.toml": 'version = 2\n[debug]\n  format = "json"\n',
    });
    assert.deepEqual(
      diffConfigs(a.config, b.config).map((c) => c.key),
      ["debug.format"],
    );
  });
});

describe("live keys", () => {
  it("isLiveKey matches an entry and what lies below it, nothing else", () => {
    assert.ok(isLiveKey(`plugins."${CRI}".registry`));
    assert.ok(isLiveKey(`plugins."${CRI}".registry.configs."h".auth.password`));
    assert.ok(!isLiveKey(`plugins."${CRI}".registryx`));
    assert.ok(!isLiveKey("root"));
    assert.ok(!isLiveKey(`plugins."${CRI}".cni.bin_dir`));
  });

  it("every live key is applied by some part of the reload, and no part applies another key", () => {
    const covered = (k: string) => APPLIED_KEYS.some((a) => k === a || k.startsWith(`${a}.`));
    for (const k of LIVE_KEYS) assert.ok(covered(k), `${k} has a part applying it`);
    for (const k of APPLIED_KEYS) assert.ok(isLiveKey(k), `${k} is listed in LIVE_KEYS`);
  });
});

describe("where a bad key is", () => {
  it("finds the line in the file that sets it, an import over the main file", () => {
    const r = load(`version = 2\nimports = ["extra.toml"]\n[debug]\n  level = "info"\n`, {
      "extra.toml": 'version = 2\n\n[debug]\n  level = "debug"\n',
    });
    const at = locateInFiles(r.files, ["debug", "level"]);
    assert.ok(at?.file.endsWith("extra.toml"), JSON.stringify(at));
    assert.equal(at?.line, 4);
  });

  it("a key under tables the file names only by their sub-tables", () => {
    const r = load(
      `version = 2\n\n[plugins."${CRI}".registry.mirrors."a.example"]\n  endpoint = ["http://x"]\n`,
    );
    assert.equal(locateInFiles(r.files, ["plugins", CRI, "registry", "mirrors"])?.line, 3);
  });

  it("keyAtLine names the key a line sets, under its table", () => {
    const text = `version = 2\n[plugins."${CRI}"]\n  # note\n  sandbox_image = "x\n[debug]\n`;
    assert.deepEqual(keyAtLine(text, 4), ["plugins", CRI, "sandbox_image"]);
    assert.deepEqual(keyAtLine(text, 2), ["plugins", CRI]);
    assert.equal(keyAtLine(text, 3), undefined);
  });
});

describe("checkConfig: the whole new config, before anything is applied", () => {
  const bad = (text: string, path: string[], re: RegExp) => {
    const r = load(text);
    assert.throws(
      () => checkConfig(r.config),
      (err: unknown) => {
        assert.ok(err instanceof ConfigKeyError, String(err));
        assert.deepEqual(err.path, path);
        const e = keyError(r.files, err);
        assert.equal(e.file, r.files[0]);
        assert.ok(e.line !== undefined && e.line > 0, e.message);
        assert.match(
          e.message,
          new RegExp(`config\\.toml:${e.line}: ${tomlPath(path).replace(/[.*"]/g, "\\$&")}: `),
        );
        assert.match(e.message, re);
        return true;
      },
    );
  };

  it("accepts the defaults and a typical file", () => {
    assert.deepEqual(checkConfig(cfgOf("version = 2\n")), []);
  });

  it("a GC duration", () => {
    bad(
      `version = 2\n[plugins."${GC}"]\n  schedule_delay = "soon"\n`,
      ["plugins", GC, "schedule_delay"],
      /soon/,
    );
  });

  it("a log level", () => {
    bad(`version = 2\n[debug]\n  level = "loud"\n`, ["debug", "level"], /unknown log level/);
  });

  it("the CRI registry table containerd refuses", () => {
    bad(
      [
        "version = 2",
        `[plugins."${CRI}".registry]`,
        '  config_path = "/etc/berth/certs.d"',
        `[plugins."${CRI}".registry.mirrors."a.example"]`,
        '  endpoint = ["http://x"]',
        "",
      ].join("\n"),
      ["plugins", CRI, "registry", "mirrors"],
      /cannot be set when `config_path` is provided/,
    );
  });

  it("a CRI stream_idle_timeout and sandbox_image", () => {
    bad(
      `version = 2\n[plugins."${CRI}"]\n  stream_idle_timeout = "x1"\n`,
      ["plugins", CRI, "stream_idle_timeout"],
      /x1/,
    );
    bad(
      `version = 2\n[plugins."${CRI}"]\n  sandbox_image = "UPPER/Case"\n`,
      ["plugins", CRI, "sandbox_image"],
      /./,
    );
  });

  it("a disabled plugin's section is not checked", () => {
    const c: Config = cfgOf(
      `version = 2\ndisabled_plugins = ["${GC}"]\n[plugins."${GC}"]\n  schedule_delay = "soon"\n`,
    );
    assert.doesNotThrow(() => checkConfig(c));
  });
});

describe("reconfigure hooks", () => {
  it("GcScheduler.reconfigure applies new thresholds and returns the old ones", async () => {
    let runs = 0;
    const s = new GcScheduler(
      {
        async collect() {
          runs++;
          return { elapsedMs: 0, removed: 0 };
        },
      },
      { ...SCHEDULER_DEFAULTS, startup_delay: "0s", mutation_threshold: 1000, deletion_threshold: 1000 },
    );
    try {
      for (let i = 0; i < 5; i++) s.mutated(false);
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(runs, 0, "below the threshold");
      const prev = s.reconfigure({ ...SCHEDULER_DEFAULTS, startup_delay: "0s", mutation_threshold: 3 });
      assert.equal(prev.mutation_threshold, 1000);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(runs, 1, "the mutations counted so far pass the new threshold");
    } finally {
      s.close();
    }
  });

  it("CniManager: conf_dir can change, and a file written into the watched dir is loaded", async () => {
    const a = join(tmp, "cni-a");
    const b = join(tmp, "cni-b");
    mkdirSync(a);
    mkdirSync(b);
    const conf = (name: string) =>
      JSON.stringify({ cniVersion: "0.4.0", name, plugins: [{ type: "bridge", bridge: "x0" }] });
    writeFileSync(join(a, "10-a.conflist"), conf("net-a"));
    const m = new CniManager({ binDirs: [], confDir: a, maxConfNum: 1, cacheDir: join(tmp, "cni-cache") });
    m.watch();
    try {
      await m.reload();
      assert.deepEqual(
        m.loaded.map((x) => x.name),
        ["net-a"],
      );
      const prev = m.reconfigure({ confDir: b, maxConfNum: 1, confTemplate: "" });
      assert.equal(prev.confDir, a);
      await m.reload();
      assert.equal(m.loaded.length, 0, "nothing in the new dir yet");
      // no call into the manager: the watcher on the new dir loads it
      writeFileSync(join(b, "10-b.conflist"), conf("net-b"));
      const deadline = Date.now() + 5000;
      while (m.loaded.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(
        m.loaded.map((x) => x.name),
        ["net-b"],
      );
    } finally {
      m.unwatch();
    }
  });
});
