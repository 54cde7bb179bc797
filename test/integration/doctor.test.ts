// `berth doctor` on this machine: what it reports is checked against the host itself (CapEff in
// /proc/self/status, the cgroup mounts), with configs that move checks between ok, warn and fail.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { repoRoot, startBerthd } from "../helpers/daemons.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

interface Line {
  name: string;
  status: string;
  detail: string;
  fix?: string;
}

function doctor(...args: string[]): { code: number | null; lines: Line[]; text: string } {
  const bin = join(repoRoot, "bin/berth.js");
  const json = spawnSync(process.execPath, [bin, "doctor", "--format", "json", ...args], {
    encoding: "utf8",
  });
  const text = spawnSync(process.execPath, [bin, "doctor", ...args], { encoding: "utf8" });
  assert.equal(json.status, text.status, "same verdict in both formats");
  return { code: text.status, lines: JSON.parse(json.stdout) as Line[], text: text.stdout };
}

const line = (lines: Line[], name: string) => {
  const l = lines.find((x) => x.name === name);
  assert.ok(l, `no ${name} line in ${JSON.stringify(lines)}`);
  return l;
};

// What this host has, read independently of the code under test.
const capSysResource = (() => {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "utf8"));
  return ((BigInt(`0x${m![1]}`) >> 24n) & 1n) === 1n;
})();
const mounts = readFileSync("/proc/self/mounts", "utf8").split("\n");
const hasV1 = mounts.some((l) => l.split(" ")[2] === "cgroup");
const hasV2 = mounts.some((l) => l.split(" ")[2] === "cgroup2");
const layout = hasV1 && hasV2 ? "hybrid" : hasV2 ? "v2" : "v1";

describe("berth doctor", () => {
  let tmp: string;
  before(async () => {
    tmp = await makeTempDir("doctor");
  });
  after(async () => {
    await removeTempDir(tmp);
  });

  it("reports CAP_SYS_RESOURCE, the cgroup layout and one line per check, exit 1 on a failure", () => {
    const cfg = join(tmp, "plain.toml");
    writeFileSync(cfg, `version = 2\nroot = "${tmp}/root"\n[grpc]\n  address = "${tmp}/none.sock"\n`);
    const { code, lines, text } = doctor("--config", cfg);
    assert.equal(text.trim().split("\n").length, lines.length, "one line per check");
    for (const l of text.trim().split("\n")) assert.match(l, /^(ok|warn|fail)\s+\S/);
    for (const l of lines) if (l.status !== "ok") assert.ok(l.fix, `${l.name}: a fix is given`);

    const caps = line(lines, "capabilities");
    if (capSysResource) assert.equal(caps.status, "ok");
    else {
      assert.equal(caps.status, "fail");
      assert.match(caps.detail, /CAP_SYS_RESOURCE/);
      assert.match(caps.detail, /oom_score_adj/);
      assert.match(caps.fix!, /restrict_oom_score_adj = true/);
      assert.equal(code, 1);
    }
    const cg = line(lines, "cgroups");
    assert.match(cg.detail, new RegExp(`^${layout} `));
    assert.match(cg.detail, /memory/);
    for (const name of [
      "config",
      "overlayfs",
      "oci runtime",
      "shim",
      "cni plugins",
      "cni config",
      "socket",
      "disk",
      "inodes",
      "clock",
    ])
      line(lines, name);
    assert.equal(line(lines, "oci runtime").status, "ok");
    assert.equal(line(lines, "shim").status, "ok");
    assert.match(line(lines, "disk").detail, /GiB free/);
    if (lines.some((l) => l.status === "fail")) assert.equal(code, 1);
  });

  it("follows the config: restrict_oom_score_adj, CNI dirs, and a running berthd's socket", async () => {
    const conf = join(tmp, "net.d");
    mkdirSync(conf);
    writeFileSync(
      join(conf, "10-test.conflist"),
      JSON.stringify({ cniVersion: "1.0.0", name: "t", plugins: [{ type: "loopback" }] }),
    );
    const d = await startBerthd({ disabledPlugins: ["io.containerd.grpc.v1.cri"] });
    try {
      const cfg = join(tmp, "full.toml");
      writeFileSync(
        cfg,
        [
          "version = 2",
          `root = "${tmp}/root"`,
          "[grpc]",
          `  address = "${d.address}"`,
          '[plugins."io.containerd.grpc.v1.cri"]',
          "  restrict_oom_score_adj = true",
          '[plugins."io.containerd.grpc.v1.cri".cni]',
          '  bin_dir = "/usr/lib/cni"',
          `  conf_dir = "${conf}"`,
          "",
        ].join("\n"),
      );
      const { lines } = doctor("--config", cfg);
      assert.equal(line(lines, "capabilities").status, capSysResource ? "ok" : "warn");
      assert.equal(line(lines, "cni plugins").status, "ok");
      assert.deepEqual(line(lines, "cni config"), {
        name: "cni config",
        status: "ok",
        detail: `10-test.conflist in ${conf}`,
      });
      const sock = line(lines, "socket");
      assert.equal(sock.status, "ok", sock.detail);
      assert.match(sock.detail, /mode 0660/);
    } finally {
      await d.cleanup();
    }
  });

  it("a config berthd would refuse fails the config check with file and line", () => {
    const cfg = join(tmp, "bad.toml");
    writeFileSync(cfg, "version = 2\n\n[grpc]\n  address = 5\n");
    const { code, lines } = doctor("--config", cfg);
    const c = line(lines, "config");
    assert.equal(c.status, "fail");
    assert.match(c.detail, new RegExp(`${cfg}:4: grpc.address`));
    assert.equal(code, 1);
  });
});
