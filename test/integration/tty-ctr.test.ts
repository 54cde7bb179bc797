// Issue "Containers and tasks", CLI part: interactive terminals (`berth run -t`, `berth tasks exec
// -t`, `berth tasks attach`) and the real ctr's `run -t` / `t exec -t` against berthd, each inside a
// pseudo-terminal from util-linux `script`; Tasks.ResizePty through the API; `-u` with names
// resolved from the rootfs; `--privileged`; and the container flags ctr has (--env-file,
// --with-ns, --memory-limit, --cpus, --label, --runtime, --runc-binary, --snapshotter).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Tasks } from "../../src/gen/containerd/services/tasks/v1/tasks_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { setChildSubreaper } from "../../src/sys/reaper.js";
import { berth, CTR_BIN, ctr, ok } from "../helpers/ctr.js";
import { type Daemon, killShimsOf, repoRoot, startBerthd } from "../helpers/daemons.js";
import {
  blob,
  buildBusyboxImage,
  busyboxLayerTar,
  linuxConfigBlob,
  MediaType,
  manifestBlob,
  pushBlob,
  pushImage,
  pushManifest,
} from "../helpers/images.js";
import { shimsOf, until } from "../helpers/procs.js";
import { type Registry, startRegistry } from "../helpers/registry.js";
import { buildTar, gzip, sha256 } from "../helpers/tarbuild.js";
import { makeTempDir, mountsUnder, removeTempDir } from "../helpers/tmp.js";

const NS = "tty-test";
const q = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;

interface PtyResult {
  code: number | null;
  out: string;
}

/**
 * Runs a shell command line inside a new pseudo-terminal (`script -qfec`), its window first set to
 * rows×cols. Our end of script's stdin stays open until it exits; `react` sees the output so far
 * and may type into the terminal.
 */
function inPty(
  command: string,
  opts: {
    rows?: number;
    cols?: number;
    timeoutMs?: number;
    react?: (out: string, type: (s: string) => void) => void;
  } = {},
): Promise<PtyResult> {
  const line = `stty rows ${opts.rows ?? 24} cols ${opts.cols ?? 80}; ${command}`;
  const child = spawn("script", ["-qfec", line, "/dev/null"], { stdio: ["pipe", "pipe", "pipe"] });
  let out = "";
  const type = (s: string) => child.stdin.write(s);
  child.stdin.on("error", () => {});
  const onData = (b: Buffer) => {
    out += b.toString("utf8");
    opts.react?.(out, type);
  };
  child.stdout.on("data", onData);
  child.stderr.on("data", onData);
  const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 30_000);
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

/** An image on top of busybox whose passwd and group files are reached through symlinks. */
async function pushUsersImage(reg: Registry, repo: string): Promise<void> {
  const base = busyboxLayerTar();
  const users = buildTar([
    { name: "etc/", type: "dir", mtime: 1700000000 },
    { name: "usr/", type: "dir", mtime: 1700000000 },
    { name: "usr/lib/", type: "dir", mtime: 1700000000 },
    {
      name: "usr/lib/passwd",
      data: "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001::/home/alice:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
      mtime: 1700000000,
    },
    {
      name: "usr/lib/group",
      data: "root:x:0:\nalice:x:1001:alice\nstaff:x:50:bob,alice\nwheel:x:10:alice\nnogroup:x:65534:\n",
      mtime: 1700000000,
    },
    // relative and absolute links: both must resolve inside the rootfs
    { name: "etc/passwd", type: "symlink", linkname: "../usr/lib/passwd", mtime: 1700000000 },
    { name: "etc/group", type: "symlink", linkname: "/usr/lib/group", mtime: 1700000000 },
  ]);
  const layers = [blob(MediaType.layerGzip, gzip(base)), blob(MediaType.layerGzip, gzip(users))];
  const config = linuxConfigBlob([sha256(base), sha256(users)], {
    Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    Cmd: ["sh"],
  });
  const manifest = manifestBlob(config, layers);
  for (const b of [...layers, config]) await pushBlob(reg.url, repo, b);
  await pushManifest(reg.url, repo, "1", manifest);
}

/** The host file holding a container's memory limit (cgroup v1 or v2). */
function memoryLimitFile(ns: string, id: string): string {
  const v1 = `/sys/fs/cgroup/memory/${ns}/${id}/memory.limit_in_bytes`;
  return existsSync(v1) ? v1 : `/sys/fs/cgroup/${ns}/${id}/memory.max`;
}

function cpuQuota(ns: string, id: string): string {
  const v1 = `/sys/fs/cgroup/cpu/${ns}/${id}/cpu.cfs_quota_us`;
  if (existsSync(v1)) return readFileSync(v1, "utf8").trim();
  return readFileSync(`/sys/fs/cgroup/${ns}/${id}/cpu.max`, "utf8").trim().split(" ")[0]!;
}

describe("terminals, users, privileged and container flags (berth and ctr against berthd)", () => {
  let reg: Registry;
  let d: Daemon;
  let ref: string;
  let usersRef: string;
  let tmp: string;
  const b = (args: string[], timeoutMs = 60_000) => berth(d.address, args, { namespace: NS, timeoutMs });
  const c = (args: string[], timeoutMs = 60_000) => ctr(d.address, args, { namespace: NS, timeoutMs });
  /** Command lines for the pty. */
  const berthLine = (args: string[]) =>
    [process.execPath, path.join(repoRoot, "bin/berth.js"), "--address", d.address, "-n", NS, ...args]
      .map(q)
      .join(" ");
  const ctrLine = (args: string[]) => [CTR_BIN, "--address", d.address, "-n", NS, ...args].map(q).join(" ");

  before(async () => {
    setChildSubreaper(true);
    reg = await startRegistry();
    await pushImage(reg.url, "test/busybox", "1", buildBusyboxImage());
    await pushUsersImage(reg, "test/users");
    ref = `${reg.host}/test/busybox:1`;
    usersRef = `${reg.host}/test/users:1`;
    d = await startBerthd({ config: "version = 2\n" });
    ok(await c(["images", "pull", "--plain-http", ref]), "pull");
    ok(await c(["images", "pull", "--plain-http", usersRef]), "pull users");
    tmp = await makeTempDir("tty-ctr");
  });

  after(async () => {
    if (d) {
      const r = await b(["c", "ls", "-q"]).catch(() => undefined);
      for (const id of (r?.stdout ?? "").split("\n").filter(Boolean)) {
        await b(["t", "rm", "-f", id]).catch(() => {});
        await b(["c", "rm", id]).catch(() => {});
      }
      killShimsOf(d.address);
      await d.cleanup();
    }
    if (tmp) await removeTempDir(tmp);
    await reg?.cleanup();
  });

  it("berth run -t: a tty sized like ours, the exit status, the terminal restored", async () => {
    const r = await inPty(
      `stty -g; ${berthLine(["run", "--rm", "-t", ref, "tty-run", "sh", "-c", "tty; [ -t 0 ] && echo yes; stty size; echo TERM=$TERM; exit 5"])}; echo rc=$?; stty -g`,
      { rows: 33, cols: 99 },
    );
    assert.equal(r.code, 0, r.out);
    const lines = r.out.split(/\r*\n/);
    assert.match(r.out, /\/dev\/pts\/\d+\r\r\nyes\r\r\n33 99\r\r\nTERM=xterm\r\r\n/, r.out);
    assert.ok(lines.includes("rc=5"), r.out);
    // the settings printed before and after berth are the same
    const settings = lines.filter((l) => /^[0-9a-f]+(:[0-9a-f]+){10,}$/.test(l));
    assert.equal(settings.length, 2, r.out);
    assert.equal(settings[0], settings[1]);
    assert.equal(ok(await b(["c", "ls", "-q"])), "");
  });

  it("ctr run -t against berthd: a tty, resized to ctr's window, the exit status", async () => {
    const r = await inPty(
      ctrLine([
        "run",
        "--rm",
        "-t",
        ref,
        "tty-ctr",
        "sh",
        "-c",
        "tty; [ -t 0 ] && echo yes; sleep 1; stty size; exit 7",
      ]),
      { rows: 34, cols: 98 },
    );
    assert.equal(r.code, 7, r.out);
    assert.match(r.out, /\/dev\/pts\/\d+\r\r\nyes\r\r\n34 98\r\r\n/, r.out);
  });

  it("tasks exec -t (berth and ctr) in a running container; input reaches the exec's tty", async () => {
    ok(await b(["run", "-d", ref, "tty-exec", "busybox", "sleep", "300"]), "run -d");
    const script = "tty; [ -t 0 ] && echo yes; sleep 1; stty size; read x; echo got:$x; exit 6";
    for (const [who, line] of [
      ["berth", berthLine(["t", "exec", "-t", "--exec-id", "x1", "tty-exec", "sh", "-c", script])],
      ["ctr", ctrLine(["t", "exec", "-t", "--exec-id", "x2", "tty-exec", "sh", "-c", script])],
    ] as const) {
      let typed = false;
      const r = await inPty(line, {
        rows: 21,
        cols: 71,
        react: (out, type) => {
          if (!typed && out.includes("21 71")) {
            typed = true;
            type("hello\r");
          }
        },
      });
      assert.equal(r.code, 6, `${who}: ${r.out}`);
      assert.match(r.out, /\/dev\/pts\/\d+\r\r\nyes\r\r\n21 71\r\r\n/, `${who}: ${r.out}`);
      assert.match(r.out, /got:hello/, `${who}: ${r.out}`);
    }
    assert.equal(
      ok(await b(["t", "ps", "tty-exec"]))
        .trim()
        .split("\n").length,
      2,
      "execs deleted",
    );
    ok(await b(["t", "rm", "-f", "tty-exec"]), "t rm -f");
    ok(await b(["c", "rm", "tty-exec"]), "c rm");
  });

  it("Tasks.ResizePty through the API sizes a detached task's pty", async () => {
    ok(
      await b([
        "run",
        "-d",
        "-t",
        ref,
        "tty-resize",
        "sh",
        "-c",
        "while :; do stty size > /tmp/size; sleep 0.1; done",
      ]),
      "run -d -t",
    );
    const conn = new Connection(d.address);
    try {
      await conn
        .client(Tasks)
        .resizePty({ containerId: "tty-resize", width: 123, height: 45 }, { namespace: NS });
      let size = "";
      for (let i = 0; i < 50 && size !== "45 123"; i++) {
        size = ok(await b(["t", "exec", "--exec-id", `cat${i}`, "tty-resize", "cat", "/tmp/size"])).trim();
        if (size !== "45 123") await sleep(100);
      }
      assert.equal(size, "45 123");
    } finally {
      conn.close();
    }
    ok(await b(["t", "rm", "-f", "tty-resize"]), "t rm -f");
    ok(await b(["c", "rm", "tty-resize"]), "c rm");
  });

  it("tasks attach: reattaches to a detached tty task's FIFOs, then deletes the task", async () => {
    ok(
      await b(["run", "-d", "-t", ref, "tty-attach", "sh", "-c", "echo ready; read x; echo got:$x; exit 3"]),
      "run -d -t",
    );
    let typed = false;
    const r = await inPty(berthLine(["t", "attach", "tty-attach"]), {
      react: (out, type) => {
        if (!typed && out.includes("ready")) {
          typed = true;
          type("hello\r");
        }
      },
    });
    assert.equal(r.code, 3, r.out);
    assert.match(r.out, /ready\r\r\n/);
    assert.match(r.out, /got:hello\r\r\n/);
    assert.doesNotMatch(ok(await b(["t", "ls"])), /tty-attach/);
    ok(await b(["c", "rm", "tty-attach"]), "c rm");

    // without a terminal: our input reaches the task's stdin, its output and exit status come back
    ok(await b(["run", "-d", ref, "plain-attach", "sh", "-c", "read x; echo got:$x; exit 4"]), "run -d");
    const a = await berth(d.address, ["t", "attach", "plain-attach"], { namespace: NS, input: "hi\n" });
    assert.equal(a.code, 4, a.stderr);
    assert.equal(a.stdout, "got:hi\n");
    ok(await b(["c", "rm", "plain-attach"]), "c rm");
  });

  it("-u: numeric, names and name:group from the rootfs's /etc/passwd and /etc/group", async () => {
    const id = async (image: string, user: string) => {
      const r = await b(["run", "--rm", "-u", user, image, "u-id", "sh", "-c", "id"]);
      assert.equal(r.code, 0, `${user}: ${r.stderr}`);
      return r.stdout.trim();
    };
    assert.equal(await id(ref, "nobody"), "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)");
    assert.equal(
      await id(ref, "nobody:nogroup"),
      "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)",
    );
    assert.equal(await id(ref, "1000"), "uid=1000 gid=0(root) groups=0(root)");
    assert.equal(await id(ref, "1000:1000"), "uid=1000 gid=1000 groups=1000");
    assert.equal(await id(ref, "0:nogroup"), "uid=0(root) gid=65534(nogroup) groups=65534(nogroup)");
    // passwd and group behind symlinks; supplementary groups from the member lists
    assert.equal(
      await id(usersRef, "alice"),
      "uid=1001(alice) gid=1001(alice) groups=10(wheel),50(staff),1001(alice)",
    );
    assert.equal(
      await id(usersRef, "1001"),
      "uid=1001(alice) gid=1001(alice) groups=10(wheel),50(staff),1001(alice)",
    );
    const bad = await b(["run", "--rm", "-u", "nosuch", ref, "u-bad", "true"]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /no users found/);
    const badGroup = await b(["run", "--rm", "-u", "nobody:nosuch", ref, "u-bad", "true"]);
    assert.match(badGroup.stderr, /no groups found/);
    assert.equal(ok(await b(["c", "ls", "-q"])), "");
    ok(await b(["c", "create", "-u", "alice", usersRef, "u-info", "busybox", "sleep", "300"]), "c create -u");
    const spec = JSON.parse(ok(await c(["c", "info", "u-info"]))).Spec;
    assert.deepEqual(spec.process.user, { uid: 1001, gid: 1001, additionalGids: [1001, 50, 10] });
    // exec --user resolves in the running container's root
    ok(await b(["t", "start", "-d", "u-info"]), "t start -d");
    const ex = await b(["t", "exec", "--exec-id", "u1", "--user", "nobody", "u-info", "sh", "-c", "id"]);
    assert.equal(ex.stdout.trim(), "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)", ex.stderr);
    ok(await b(["t", "rm", "-f", "u-info"]), "t rm");
    ok(await b(["c", "rm", "u-info"]), "c rm");
  });

  it("--privileged: our capabilities, the host's devices, writable sysfs, no masked paths", async () => {
    const hostCaps = readFileSync("/proc/self/status", "utf8").match(/^CapEff:\s*(\w+)$/m)![1];
    const hostLoops = readdirSync("/dev")
      .filter((n) => /^loop\d+$/.test(n))
      .sort();
    const cmd =
      "grep CapEff /proc/self/status; ls /dev | grep -E '^loop[0-9]+$' | sort | tr '\\n' ' '; echo; grep ' /sys ' /proc/self/mounts | cut -d' ' -f4 | cut -d, -f1; grep -c ' /proc/keys ' /proc/self/mounts; true";
    const p = await b(["run", "--rm", "--privileged", ref, "priv", "sh", "-c", cmd]);
    assert.equal(p.code, 0, p.stderr);
    const [caps, loops, sys, keys] = p.stdout.split("\n");
    assert.equal(caps, `CapEff:\t${hostCaps}`);
    assert.deepEqual(loops!.trim().split(" ").filter(Boolean), hostLoops);
    assert.equal(sys, "rw");
    assert.equal(keys, "0");
    const u = await b(["run", "--rm", ref, "unpriv", "sh", "-c", cmd]);
    const [ucaps, uloops, usys, ukeys] = u.stdout.split("\n");
    assert.equal(ucaps, "CapEff:\t00000000a80425fb");
    assert.equal(uloops!.trim(), "");
    assert.equal(usys, "ro");
    assert.equal(ukeys, "1");
  });

  it("--env-file, --with-ns, --memory-limit, --cpus, --label, --runtime, --runc-binary, --snapshotter", async () => {
    // --env-file: lines as ctr takes them, over the image's environment; --env over the file
    const envFile = path.join(tmp, "env");
    writeFileSync(envFile, "PATH=/bin\nA=from-file\nB=from-file\n");
    const e = await b([
      "run",
      "--rm",
      "--env-file",
      envFile,
      "--env",
      "B=from-flag",
      ref,
      "f-env",
      "sh",
      "-c",
      'echo "$PATH $A $B"',
    ]);
    assert.equal(e.stdout, "/bin from-file from-flag\n", e.stderr);

    // --memory-limit, --cpus, --label on a detached task; --with-ns joins its network namespace
    ok(
      await b([
        "run",
        "-d",
        "--memory-limit",
        "33554432",
        "--cpus",
        "0.5",
        "--label",
        "k=v",
        "--label",
        "bare",
        ref,
        "f-res",
        "busybox",
        "sleep",
        "300",
      ]),
      "run -d",
    );
    assert.equal(readFileSync(memoryLimitFile(NS, "f-res"), "utf8").trim(), "33554432");
    assert.equal(cpuQuota(NS, "f-res"), "50000");
    assert.match(ok(await c(["t", "metrics", "f-res"])), /memory\.(limit_in_bytes|usage_limit)\s+33554432/);
    const info = JSON.parse(ok(await c(["c", "info", "f-res"])));
    assert.deepEqual(info.Labels, { k: "v", bare: "true" });
    assert.deepEqual(info.Spec.annotations, { k: "v", bare: "true" });
    assert.deepEqual(info.Spec.linux.resources.cpu, { shares: 1024, quota: 50000, period: 100000 });
    assert.equal(info.Spec.linux.resources.memory.limit, 33554432);
    assert.equal(info.Runtime.Name, "io.containerd.runc.v2");
    const pid = Number(/f-res\s+(\d+)/.exec(ok(await b(["t", "ls"])))![1]);
    const netns = readlinkSync(`/proc/${pid}/ns/net`);
    const w = await b([
      "run",
      "--rm",
      "--with-ns",
      `network:/proc/${pid}/ns/net`,
      ref,
      "f-ns",
      "sh",
      "-c",
      "readlink /proc/self/ns/net",
    ]);
    assert.equal(w.stdout.trim(), netns, w.stderr);
    const own = await b(["run", "--rm", ref, "f-ns2", "sh", "-c", "readlink /proc/self/ns/net"]);
    assert.notEqual(own.stdout.trim(), netns);
    const badNs = await b(["run", "--rm", "--with-ns", "bogus:/x", ref, "f-ns3", "true"]);
    assert.match(badNs.stderr, /the Linux namespace type specified in --with-ns is not valid: bogus/);
    ok(await b(["t", "rm", "-f", "f-res"]), "t rm");
    ok(await b(["c", "rm", "f-res"]), "c rm");

    // --runtime: a runtime without a shim fails as with ctr, leaving nothing behind
    const rt = await b(["run", "--rm", "--runtime", "io.containerd.nope.v1", ref, "f-rt", "true"]);
    const rtCtr = await c(["run", "--rm", "--runtime", "io.containerd.nope.v1", ref, "f-rt2", "true"]);
    assert.notEqual(rt.code, 0);
    assert.equal(rt.stderr.replace(/^berth:/, ""), rtCtr.stderr.replace(/^ctr:/, ""));
    const rb = await b([
      "run",
      "--rm",
      "--runtime",
      "io.containerd.nope.v1",
      "--runc-binary",
      "/usr/bin/runc",
      ref,
      "f-rt3",
      "true",
    ]);
    assert.match(rb.stderr, /runc-binary .* only supported for "io\.containerd\.runc\.v2" runtime/);
    // --runc-binary: the runc options reach the shim (a wrapper that leaves a mark, then runs runc)
    const mark = path.join(tmp, "runc-wrapper-ran");
    const wrapper = path.join(tmp, "runc-wrapper");
    writeFileSync(wrapper, `#!/bin/sh\ntouch ${mark}\nexec /usr/sbin/runc "$@"\n`, { mode: 0o755 });
    const rc = await b(["run", "--rm", "--runc-binary", wrapper, ref, "f-runc", "echo", "runc"]);
    assert.equal(rc.stdout, "runc\n", rc.stderr);
    assert.ok(existsSync(mark), "the shim ran the runc binary it was given");
    assert.equal(ok(await b(["c", "ls", "-q"])), "");

    // --snapshotter native: the image is unpacked there first (as ctr does), then used
    const sn = await b([
      "run",
      "--rm",
      "--snapshotter",
      "native",
      ref,
      "f-native",
      "sh",
      "-c",
      "echo native",
    ]);
    assert.equal(sn.stdout, "native\n", sn.stderr);
    assert.match(ok(await c(["snapshots", "--snapshotter", "native", "ls"])), /sha256:\w+\s+Committed/);
  });

  it("leaves no shims or mounts behind", async () => {
    await until("shims gone", () => shimsOf(d.address).length === 0);
    assert.deepEqual(mountsUnder(d.state), []);
    assert.deepEqual(mountsUnder(d.root), []);
  });
});
