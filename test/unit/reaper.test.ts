// The reaper's primitives on real processes: an orphan reparented to this process (a subreaper)
// is seen as exited by hasExitedChild without being collected, so reap still gets it after.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { hasExitedChild, reap, setChildSubreaper } from "../../src/sys/reaper.js";
import { until } from "../helpers/procs.js";

const stateOf = (pid: number): string | undefined => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
  } catch {
    return undefined;
  }
};

test("hasExitedChild sees an exited orphan without collecting it; reap collects it after", async () => {
  setChildSubreaper(true);
  try {
    assert.equal(hasExitedChild(), false, "nothing has exited yet");
    // the shell exits at once (execFileSync collects it); its background sleep is reparented here
    const pid = Number(
      execFileSync("/bin/sh", ["-c", "sleep 0.3 >/dev/null 2>&1 & echo $!"], { encoding: "utf8" }),
    );
    assert.ok(pid > 0);
    assert.equal(reap(pid), "running", "the orphan is this process's child now, still running");
    assert.equal(hasExitedChild(), false, "a running child is not an exited one");
    await until("the orphan to exit", () => stateOf(pid) === "Z", 5000);
    assert.equal(hasExitedChild(), true);
    assert.equal(hasExitedChild(), true, "looking did not collect it");
    assert.equal(stateOf(pid), "Z");
    assert.equal(reap(pid), "reaped");
    assert.equal(stateOf(pid), undefined, "collected");
    assert.equal(hasExitedChild(), false);
  } finally {
    setChildSubreaper(false);
  }
});
