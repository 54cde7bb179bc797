// `berth completion bash`: the script is generated from the commander program, so it knows
// every command, alias and option; run it in a real bash the way bash-completion would.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { repoRoot } from "../helpers/daemons.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

describe("berth completion bash", () => {
  let tmp: string;
  let script: string;
  before(async () => {
    tmp = await makeTempDir("completion");
    const r = spawnSync(process.execPath, [join(repoRoot, "bin/berth.js"), "completion", "bash"], {
      encoding: "utf8",
    });
    assert.equal(r.status, 0, r.stderr);
    script = join(tmp, "berth");
    writeFileSync(script, r.stdout);
  });
  after(async () => {
    await removeTempDir(tmp);
  });

  /** What bash offers after the words typed so far (the last one being completed). */
  function complete(...words: string[]): string[] {
    const quoted = words.map((w) => `'${w}'`).join(" ");
    const r = spawnSync(
      "bash",
      [
        "-c",
        `source '${script}'; COMP_WORDS=(${quoted}); COMP_CWORD=${words.length - 1}; _berth_complete; printf '%s\\n' "\${COMPREPLY[@]}"`,
      ],
      { encoding: "utf8" },
    );
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.split("\n").filter(Boolean);
  }

  it("is valid bash registered for berth", () => {
    const r = spawnSync("bash", ["-c", `source '${script}' && complete -p berth`], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /-F _berth_complete berth/);
  });

  it("completes commands, subcommands and aliases", () => {
    assert.deepEqual(complete("berth", "im"), ["images"]);
    assert.deepEqual(complete("berth", "images", "pu").sort(), ["pull", "push"]);
    assert.deepEqual(complete("berth", "i", "pu").sort(), ["pull", "push"], "alias i of images");
    assert.ok(complete("berth", "").includes("doctor"));
    assert.ok(complete("berth", "tasks", "").includes("exec"));
  });

  it("skips global options and their values", () => {
    assert.deepEqual(complete("berth", "-n", "team", "--address", "/x.sock", "ta"), ["tasks"]);
    assert.deepEqual(complete("berth", "--namespace", ""), [], "a value: left to file completion");
  });

  it("completes each command's own options", () => {
    const pull = complete("berth", "images", "pull", "--");
    assert.ok(pull.includes("--platform"), pull.join(" "));
    assert.ok(!pull.includes("--namespace"), "global options belong to berth itself");
    assert.deepEqual(complete("berth", "doctor", "--c"), ["--config"]);
  });
});
