// The CRI pod/container pieces that need no daemon: name reservation with shared attempts, the
// CRI log line format and its cutting of long lines, seccomp profile choice, capability lists.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { CriLogFile, copyToCriLog, rfc3339Nano } from "../../src/cri/logs.js";
import { containerName, NameIndex, sandboxName } from "../../src/cri/naming.js";
import { adjustCapabilities, cgroupsPath } from "../../src/cri/oci.js";
import { resolvConf } from "../../src/cri/pods.js";
import { seccompFor } from "../../src/cri/seccomp.js";
import { SecurityProfile_ProfileType } from "../../src/gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";

const deferred = () => {
  let resolve!: () => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
};

describe("CRI names", () => {
  const pod = { name: "web", namespace: "default", uid: "u1", attempt: 2 };
  it("spells names as the kubelet's metadata", () => {
    assert.equal(sandboxName(pod), "web_default_u1_2");
    assert.equal(containerName({ name: "app", attempt: 0 }, pod), "app_web_default_u1_0");
  });

  it("shares an attempt with the same request, refuses another request, frees a failed one's name", async () => {
    const idx = new NameIndex("sandbox");
    const gate = deferred();
    let runs = 0;
    const first = idx.create("n", "id1", "req", async () => {
      runs++;
      await gate.promise;
    });
    const retry = idx.create("n", "id2", "req", async () => {
      runs++;
    });
    await assert.rejects(
      idx.create("n", "id3", "other", async () => {}),
      /failed to reserve sandbox name "n": name "n" is reserved for "id1"/,
    );
    gate.resolve();
    assert.deepEqual(await Promise.all([first, retry]), ["id1", "id1"]);
    assert.equal(runs, 1);
    // a retry after the attempt finished is handed its object
    assert.equal(await idx.create("n", "id4", "req", async () => {}), "id1");
    await assert.rejects(
      idx.create("n", "id5", "other", async () => {}),
      /is reserved for "id1"/,
    );
    await assert.rejects(
      idx.create("m", "idm", "req", async () => {
        throw new Error("boom");
      }),
      /boom/,
    );
    assert.equal(await idx.create("m", "idm2", "other", async () => {}), "idm2");
    idx.release("n");
    assert.equal(await idx.create("n", "id6", "other", async () => {}), "id6");
    idx.reserve("r", "idr", "req");
    assert.equal(await idx.create("r", "x", "req", async () => {}), "idr");
  });
});

describe("CRI log format", () => {
  it("formats RFC3339Nano like Go (trailing zeros dropped)", () => {
    assert.equal(rfc3339Nano(Date.UTC(2024, 0, 2, 3, 4, 5, 120), 500), "2024-01-02T03:04:05.1200005Z");
    assert.equal(rfc3339Nano(Date.UTC(2024, 0, 2, 3, 4, 5, 0)), "2024-01-02T03:04:05Z");
  });

  it("writes full and partial lines, cutting at the size limit and at the stream's end", async () => {
    const dir = mkdtempSync(join(tmpdir(), "cri-log-"));
    try {
      const file = new CriLogFile(join(dir, "c.log"));
      await file.open();
      const out = new PassThrough();
      const err = new PassThrough();
      const a = copyToCriLog(out, "stdout", file, 8);
      const b = copyToCriLog(err, "stderr", file, 8);
      out.write("hel");
      out.write("lo\r\n0123456789abcdefXY\n");
      err.end("no newline at end");
      await b;
      out.end("tail");
      await a;
      file.close();
      const recs = readFileSync(join(dir, "c.log"), "utf8")
        .trimEnd()
        .split("\n")
        .map((l) => {
          const m = /^\S+Z (stdout|stderr) ([PF]) (.*)$/.exec(l);
          assert.ok(m, l);
          return m.slice(1).join(" ");
        });
      // each stream's records in order (the two streams interleave as their data arrives)
      assert.deepEqual(
        recs.filter((r) => r.startsWith("stdout")),
        ["stdout F hello", "stdout P 01234567", "stdout P 89abcdef", "stdout F XY", "stdout F tail"],
      );
      assert.deepEqual(
        recs.filter((r) => r.startsWith("stderr")),
        ["stderr P no newli", "stderr P ne at en", "stderr F d"],
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("CRI security pieces", () => {
  it("chooses seccomp profiles by the CRI's fields", () => {
    const rd = seccompFor(
      {
        $typeName: "runtime.v1.SecurityProfile",
        profileType: SecurityProfile_ProfileType.RuntimeDefault,
        localhostRef: "",
      },
      "",
    ) as { defaultAction: string; syscalls: { names: string[] }[] };
    assert.equal(rd.defaultAction, "SCMP_ACT_ALLOW");
    assert.ok(rd.syscalls[0]?.names.includes("unshare"));
    assert.ok(rd.syscalls[0]?.names.includes("keyctl"));
    const withAdmin = seccompFor(undefined, "runtime/default", undefined, ["CAP_SYS_ADMIN"]) as typeof rd;
    assert.ok(!withAdmin.syscalls[0]?.names.includes("unshare"));
    assert.ok(withAdmin.syscalls[0]?.names.includes("keyctl"));
    assert.equal(seccompFor(undefined, ""), undefined);
    assert.equal(seccompFor(undefined, "unconfined"), undefined);
    assert.deepEqual(
      seccompFor(undefined, "localhost/p.json", (p) => ({ path: p })),
      { path: "p.json" },
    );
    assert.throws(() => seccompFor(undefined, "bogus"), /unsupported seccomp profile/);
  });

  it("adds and drops capabilities by either spelling", () => {
    assert.deepEqual(adjustCapabilities(["CAP_CHOWN", "CAP_KILL"], ["net_admin", "CAP_KILL"], ["chown"]), [
      "CAP_KILL",
      "CAP_NET_ADMIN",
    ]);
    assert.deepEqual(adjustCapabilities(["CAP_CHOWN"], ["SYS_TIME"], ["ALL"]), ["CAP_SYS_TIME"]);
  });

  it("writes resolv.conf from the DNS config", () => {
    assert.equal(
      resolvConf({
        $typeName: "runtime.v1.DNSConfig",
        servers: ["1.1.1.1", "8.8.8.8"],
        searches: ["a.svc", "b"],
        options: ["ndots:5"],
      }),
      "search a.svc b\nnameserver 1.1.1.1\nnameserver 8.8.8.8\noptions ndots:5\n",
    );
    assert.equal(resolvConf(undefined), undefined);
  });
});

describe("cgroupsPath from the kubelet's cgroup parent", () => {
  it("a systemd slice parent gives runc's slice:prefix:name form with containerd's prefix", () => {
    assert.equal(
      cgroupsPath("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice", "abc"),
      "kubepods-besteffort-pod12.slice:cri-containerd:abc",
    );
    assert.equal(cgroupsPath("kubepods.slice/", "abc"), "kubepods.slice:cri-containerd:abc");
  });
  it("any other parent is a cgroupfs path under it", () => {
    assert.equal(cgroupsPath("/kubepods/besteffort/pod12", "abc"), "/kubepods/besteffort/pod12/abc");
    assert.equal(cgroupsPath("/kubepods/", "abc"), "/kubepods/abc");
  });
});
