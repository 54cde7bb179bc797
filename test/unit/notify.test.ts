// sd_notify's watchdog: the interval read from systemd's variables, and the pings themselves
// arriving on a real unix datagram socket.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { sdNotify, startWatchdog, watchdogIntervalMs } from "../../src/sys/notify.js";
import { listenNotify } from "../helpers/notify-listener.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const KEYS = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] as const;

function withEnv(): () => void {
  const saved = KEYS.map((k) => [k, process.env[k]] as const);
  return () => {
    for (const [k, v] of saved) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
}

describe("sd_notify watchdog", () => {
  let tmp: string;
  before(async () => {
    tmp = await makeTempDir("notify");
  });
  after(async () => {
    await removeTempDir(tmp);
  });

  it("pings at half of WATCHDOG_USEC, only for the PID systemd named", () => {
    assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: "30000000" }, 42), 15_000);
    assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: "30000000", WATCHDOG_PID: "42" }, 42), 15_000);
    assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: "30000000", WATCHDOG_PID: "43" }, 42), undefined);
    assert.equal(watchdogIntervalMs({}, 42), undefined);
    assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: "0" }, 42), undefined);
    assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: "soon" }, 42), undefined);
  });

  it("sends WATCHDOG=1 repeatedly from an unref'd timer and clears the variables", async () => {
    const sock = join(tmp, "notify.sock");
    const listener = await listenNotify(sock);
    const restore = withEnv();
    let timer: NodeJS.Timeout | undefined;
    try {
      process.env.NOTIFY_SOCKET = sock;
      process.env.WATCHDOG_USEC = "100000"; // 100 ms: a ping every 50 ms
      process.env.WATCHDOG_PID = String(process.pid);
      timer = startWatchdog((err) => assert.fail(String(err)));
      assert.ok(timer, "a watchdog is configured");
      assert.equal(timer.hasRef(), false);
      assert.equal(process.env.WATCHDOG_USEC, undefined, "children must not inherit the watchdog");
      await listener.until((m) => m.filter((x) => x === "WATCHDOG=1").length >= 4, 5000);
      // a blocked event loop sends nothing: the point of pinging from the loop
      clearInterval(timer);
      assert.equal(sdNotify("READY=1"), true);
      await listener.until((m) => m.includes("READY=1"));
      const n = listener.messages().length;
      await sleep(200);
      assert.equal(listener.messages().length, n);
    } finally {
      clearInterval(timer);
      restore();
      listener.close();
    }
  });

  it("does nothing without WATCHDOG_USEC", () => {
    const restore = withEnv();
    try {
      process.env.NOTIFY_SOCKET = join(tmp, "none.sock");
      delete process.env.WATCHDOG_USEC;
      assert.equal(
        startWatchdog(() => {}),
        undefined,
      );
    } finally {
      restore();
    }
  });
});
