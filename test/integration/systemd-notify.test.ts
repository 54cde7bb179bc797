// berthd under a systemd-like supervisor: READY=1 once serving, WATCHDOG=1 every WATCHDOG_USEC/2
// while running, STOPPING=1 as soon as SIGTERM starts the shutdown.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ctr, ok } from "../helpers/ctr.js";
import { startBerthd } from "../helpers/daemons.js";
import { listenNotify } from "../helpers/notify-listener.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

describe("berthd and systemd's notify socket", () => {
  let tmp: string;
  before(async () => {
    tmp = await makeTempDir("sd-notify");
  });
  after(async () => {
    await removeTempDir(tmp);
  });

  it("sends READY=1, WATCHDOG=1 repeatedly, then STOPPING=1 on SIGTERM", async () => {
    const sock = join(tmp, "notify.sock");
    const listener = await listenNotify(sock);
    const d = await startBerthd({
      env: { ...process.env, NOTIFY_SOCKET: sock, WATCHDOG_USEC: "400000" },
    });
    try {
      await listener.until((m) => m.includes("READY=1"));
      ok(await ctr(d.address, ["version"]));
      const pings = () => listener.messages().filter((x) => x === "WATCHDOG=1").length;
      await listener.until(() => pings() >= 4, 10_000);
      const msgs = listener.messages();
      assert.ok(msgs.indexOf("READY=1") < msgs.indexOf("WATCHDOG=1"), "pings start once ready");
      const exit = await d.stop("SIGTERM");
      assert.equal(exit.code, 0);
      await listener.until((m) => m.includes("STOPPING=1"));
    } finally {
      listener.close();
      await d.cleanup();
    }
  });

  it("sends no pings when WATCHDOG_PID names another process", async () => {
    const sock = join(tmp, "notify2.sock");
    const listener = await listenNotify(sock);
    const d = await startBerthd({
      env: { ...process.env, NOTIFY_SOCKET: sock, WATCHDOG_USEC: "200000", WATCHDOG_PID: "1" },
    });
    try {
      await listener.until((m) => m.includes("READY=1"));
      await new Promise((r) => setTimeout(r, 600));
      assert.deepEqual(
        listener.messages().filter((x) => x === "WATCHDOG=1"),
        [],
      );
    } finally {
      listener.close();
      await d.cleanup();
    }
  });
});
