// `make install DESTDIR=…` into a temporary root: the tree it lays out, the installed berthd
// starting from the installed config (root, state and socket moved to temp paths by flags) and
// answering the real ctr, and a reinstall that keeps an operator's edited config.toml.
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { ctr } from "../helpers/ctr.js";
import { killShimsOf, repoRoot } from "../helpers/daemons.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const PREFIX = "/opt/berth";

/** What `make install` runs (checked below), called directly so the test needs no full rebuild. */
function install(destdir: string) {
  const r = spawnSync(join(repoRoot, "scripts/install.sh"), [`DESTDIR=${destdir}`, `PREFIX=${PREFIX}`], {
    encoding: "utf8",
    timeout: 120_000,
  });
  assert.equal(r.status, 0, `install failed:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

describe("make install", () => {
  let tmp: string;
  let dest: string;
  let daemon: ChildProcess | undefined;
  const sock = () => join(tmp, "run/berth.sock");

  before(async () => {
    tmp = await makeTempDir("install");
    dest = join(tmp, "destdir");
  });
  after(async () => {
    if (daemon?.pid && daemon.exitCode === null && daemon.signalCode === null) {
      const exited = new Promise((r) => daemon!.once("exit", r));
      daemon.kill("SIGKILL");
      await exited;
    }
    if (tmp) {
      killShimsOf(sock());
      await removeTempDir(tmp);
    }
  });

  it("the Makefile's install target runs scripts/install.sh with PREFIX and DESTDIR", () => {
    const r = spawnSync("make", ["-n", "-C", repoRoot, "install", "DESTDIR=/staging", "PREFIX=/opt/x"], {
      encoding: "utf8",
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /PREFIX="\/opt\/x" DESTDIR="\/staging" scripts\/install\.sh/);
  });

  it("lays out the program, links, unit, default config and completions", () => {
    install(dest);
    const home = join(dest, PREFIX);
    for (const f of [
      "bin/berthd.js",
      "bin/berth.js",
      "package.json",
      "dist/src/cmd/berthd/main.js",
      "docs/install.md",
    ])
      assert.ok(existsSync(join(home, f)), `${f} installed`);
    assert.equal(readlinkSync(join(dest, "usr/local/bin/berthd")), `${PREFIX}/bin/berthd.js`);
    assert.equal(readlinkSync(join(dest, "usr/local/bin/berth")), `${PREFIX}/bin/berth.js`);
    // production dependencies only
    assert.ok(existsSync(join(home, "node_modules/commander/package.json")));
    assert.ok(existsSync(join(home, "node_modules/better-sqlite3/package.json")));
    assert.ok(!existsSync(join(home, "node_modules/typescript")), "no devDependencies");
    assert.ok(!existsSync(join(home, "node_modules/@biomejs")), "no devDependencies");

    const unit = readFileSync(join(dest, "etc/systemd/system/berth.service"), "utf8");
    assert.match(
      unit,
      new RegExp(`^ExecStart=${PREFIX}/bin/berthd\\.js --config /etc/berth/config\\.toml$`, "m"),
    );
    assert.match(unit, /^Type=notify$/m);
    assert.match(unit, /^WatchdogSec=\d+s$/m);
    assert.match(unit, /^KillMode=process$/m);
    // systemd itself accepts the unit (with ExecStart pointing into the staging root)
    if (existsSync("/usr/bin/systemd-analyze")) {
      const staged = join(tmp, "berth.service");
      writeFileSync(staged, unit.replaceAll(PREFIX, join(dest, PREFIX)));
      const v = spawnSync("/usr/bin/systemd-analyze", ["verify", staged], { encoding: "utf8" });
      assert.equal(v.status, 0, `systemd-analyze verify: ${v.stdout}${v.stderr}`);
      assert.equal(v.stderr.trim(), "", v.stderr);
    }

    // the config is what the installed berthd prints as its defaults
    const conf = readFileSync(join(dest, "etc/berth/config.toml"), "utf8");
    const def = spawnSync(join(home, "bin/berthd.js"), ["config", "default"], { encoding: "utf8" });
    assert.equal(def.status, 0, def.stderr);
    assert.equal(conf, def.stdout);
    assert.match(conf, /^root = "\/var\/lib\/berth"$/m);

    const comp = readFileSync(join(dest, "usr/share/bash-completion/completions/berth"), "utf8");
    assert.match(comp, /complete -o default -F _berth_complete berth/);
  });

  it("the installed berthd starts from the installed config and answers ctr", async () => {
    const home = join(dest, PREFIX);
    const args = [
      "--config",
      join(dest, "etc/berth/config.toml"),
      "--root",
      join(tmp, "lib"),
      "--state",
      join(tmp, "run"),
      "--address",
      sock(),
    ];
    let output = "";
    // run as the unit runs it: the file itself (its shebang names the Node it was installed with)
    daemon = spawn(join(home, "bin/berthd.js"), args, { stdio: ["ignore", "pipe", "pipe"], cwd: "/" });
    daemon.stdout!.on("data", (c: Buffer) => {
      output += c.toString();
    });
    daemon.stderr!.on("data", (c: Buffer) => {
      output += c.toString();
    });
    const deadline = Date.now() + 30_000;
    let version = "";
    while (Date.now() < deadline) {
      assert.equal(daemon.exitCode, null, `installed berthd exited:\n${output}`);
      if (existsSync(sock())) {
        const r = await ctr(sock(), ["version"], { timeoutMs: 5000 });
        if (r.code === 0) {
          version = r.stdout;
          break;
        }
      }
      await sleep(100);
    }
    assert.match(version, /Server:\s+Version:\s+v\d/, `no answer from the installed berthd:\n${output}`);
    assert.equal(statSync(sock()).mode & 0o777, 0o660);
    // it is the installed copy that runs, not the checkout
    const cmdline = readFileSync(`/proc/${daemon.pid}/cmdline`, "utf8");
    assert.ok(cmdline.includes(join(home, "bin/berthd.js")), cmdline);
    const exited = new Promise<number | null>((r) => daemon!.once("exit", (code) => r(code)));
    daemon.kill("SIGTERM");
    assert.equal(await exited, 0);
  });

  it("a second install keeps an edited config.toml and replaces the program", () => {
    const conf = join(dest, "etc/berth/config.toml");
    const edited = `${readFileSync(conf, "utf8")}\n# the operator's own setting\n`;
    writeFileSync(conf, edited);
    const stale = join(dest, PREFIX, "dist/src/stale-file.js");
    writeFileSync(stale, "");
    const out = install(dest);
    assert.match(out, /keeping the existing/);
    assert.equal(readFileSync(conf, "utf8"), edited);
    assert.ok(!existsSync(stale), "the old program tree is replaced, not merged");
  });
});
