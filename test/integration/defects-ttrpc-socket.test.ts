// Issue 14 defect 1: the ttrpc events socket (`<address>.ttrpc`, where shims forward task events)
// gets the gRPC socket's treatment: mode 0660 whatever the umask, owner from `[ttrpc] uid/gid`.
// Before, it was created by a plain listen(): under umask 000 it was srwxrwxrwx, and any local
// user could publish a fake /tasks/exit that every subscriber believes.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, statSync } from "node:fs";
import { dirname } from "node:path";
import { after, describe, it } from "node:test";
import { type Daemon, startBerthd } from "../helpers/daemons.js";

/** Start berthd as if from a shell whose umask is 000 (the daemon inherits it). */
async function startUnderUmask0(config: string): Promise<Daemon> {
  const old = process.umask(0);
  try {
    return await startBerthd({ config });
  } finally {
    process.umask(old);
  }
}

/**
 * Whether uid 65534 (nobody) can connect to the unix socket at `path`. The socket's directory (a
 * test temp dir, 0700) is opened to others first, so only the socket's own mode decides.
 */
function nobodyCanConnect(path: string): boolean {
  chmodSync(dirname(path), 0o755);
  const r = spawnSync(
    process.execPath,
    [
      "-e",
      `const s = require("node:net").connect(${JSON.stringify(path)});
       s.on("connect", () => { process.stdout.write("connected"); s.destroy(); });
       s.on("error", (e) => { process.stdout.write(e.code); });`,
    ],
    { uid: 65534, gid: 65534, encoding: "utf8", timeout: 10_000 },
  );
  return r.stdout === "connected";
}

describe("the ttrpc events socket: mode and owner as configured", () => {
  const daemons: Daemon[] = [];
  after(async () => {
    for (const d of daemons) await d.cleanup();
  });

  it("is 0660 and owned by [ttrpc] uid/gid under umask 000, like the gRPC socket", async () => {
    const d = await startUnderUmask0(
      "version = 2\n[grpc]\n  uid = 4321\n  gid = 8765\n[ttrpc]\n  uid = 2345\n  gid = 6789\n",
    );
    daemons.push(d);
    const grpc = statSync(d.address);
    assert.equal(grpc.mode & 0o777, 0o660);
    const st = statSync(`${d.address}.ttrpc`);
    assert.ok(st.isSocket());
    assert.equal((st.mode & 0o777).toString(8), "660");
    assert.equal(st.uid, 2345);
    assert.equal(st.gid, 6789);
    assert.equal(nobodyCanConnect(`${d.address}.ttrpc`), false, "an unprivileged user reached the socket");
  });

  it("is 0660 and root's without [ttrpc] uid/gid", async () => {
    const d = await startUnderUmask0("version = 2\n");
    daemons.push(d);
    const st = statSync(`${d.address}.ttrpc`);
    assert.equal((st.mode & 0o777).toString(8), "660");
    assert.equal(st.uid, 0);
    assert.equal(st.gid, 0);
    assert.equal(nobodyCanConnect(`${d.address}.ttrpc`), false, "an unprivileged user reached the socket");
  });
});
