// The host probes behind `berth doctor`, fed other machines' /proc text: cgroup v1, v2 and hybrid
// layouts, and capability masks.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CAP_SYS_RESOURCE, effectiveCaps, hasCap, parseCgroupLayout, which } from "../../src/sys/host.js";

const HYBRID = `tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,nosuid,nodev,noexec,relatime,pids 0 0
`;
const V2 =
  "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0\n";
const V1 =
  "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\ncgroup /sys/fs/cgroup/blkio cgroup rw,relatime,blkio 0 0\n";

describe("host probes", () => {
  it("tells hybrid, v2 and v1 cgroup layouts apart", () => {
    const hybrid = parseCgroupLayout(HYBRID, () => "");
    assert.equal(hybrid.version, "hybrid");
    assert.deepEqual(hybrid.controllers, ["cpu", "cpuacct", "memory", "pids"]);
    assert.equal(hybrid.unifiedMount, "/sys/fs/cgroup/unified");
    assert.deepEqual(hybrid.unifiedControllers, []);

    const v2 = parseCgroupLayout(V2, (dir) => {
      assert.equal(dir, "/sys/fs/cgroup");
      return "cpuset cpu io memory hugetlb pids rdma misc\n";
    });
    assert.equal(v2.version, "v2");
    assert.deepEqual(v2.controllers, ["cpu", "cpuset", "hugetlb", "io", "memory", "misc", "pids", "rdma"]);

    const v1 = parseCgroupLayout(V1, () => assert.fail("no v2 tree to read"));
    assert.equal(v1.version, "v1");
    assert.deepEqual(v1.controllers, ["blkio", "memory"]);
    assert.equal(parseCgroupLayout("proc /proc proc rw 0 0\n", () => "").version, "none");
  });

  it("reads CAP_SYS_RESOURCE (bit 24) from CapEff", () => {
    const withheld = effectiveCaps("Name:\tx\nCapEff:\t000001fffeffffff\n");
    assert.equal(hasCap(withheld, CAP_SYS_RESOURCE), false);
    assert.equal(hasCap(withheld, 21), true);
    assert.equal(hasCap(effectiveCaps("CapEff:\t000001ffffffffff\n"), CAP_SYS_RESOURCE), true);
    assert.throws(() => effectiveCaps("Name:\tx\n"), /CapEff/);
  });

  it("finds executables on PATH", () => {
    assert.equal(which("sh", "/nonexistent:/bin"), "/bin/sh");
    assert.equal(which("no-such-binary-here", "/bin:/usr/bin"), undefined);
  });
});
