import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { shimGroupOf } from "../../src/core/runtime/shim-group.js";
import { canLaunchDirectly, shimSocketAddress } from "../../src/core/runtime/shim-launch.js";
import { OptionsSchema } from "../../src/gen/containerd/runc/v1/oci_pb.js";

const bytes = (v: unknown) => new TextEncoder().encode(typeof v === "string" ? v : JSON.stringify(v));

describe("shimGroupOf (which runc v2 shim a task joins)", () => {
  it("a task without a group annotation is a group of its own", () => {
    assert.equal(shimGroupOf(undefined, "t1"), "t1");
    assert.equal(shimGroupOf(bytes({ ociVersion: "1.0.2" }), "t1"), "t1");
    assert.equal(shimGroupOf(bytes({ annotations: { "x.y": "z" } }), "t1"), "t1");
  });
  it("the CRI's sandbox id groups a pod's containers", () => {
    const spec = { annotations: { "io.kubernetes.cri.sandbox-id": "pod1" } };
    assert.equal(shimGroupOf(bytes(spec), "c1"), "pod1");
  });
  it("io.containerd.runc.v2.group wins over the sandbox id, as the shim reads it first", () => {
    const spec = {
      annotations: { "io.kubernetes.cri.sandbox-id": "pod1", "io.containerd.runc.v2.group": "g" },
    };
    assert.equal(shimGroupOf(bytes(spec), "c1"), "g");
  });
  it("the names only mentioned elsewhere in the spec, or a spec that is not JSON, group nothing", () => {
    const spec = { process: { args: ["echo", "io.kubernetes.cri.sandbox-id"] }, annotations: {} };
    assert.equal(shimGroupOf(bytes(spec), "c1"), "c1");
    assert.equal(shimGroupOf(bytes("{io.containerd.runc.v2.group"), "c1"), "c1");
    assert.equal(shimGroupOf(bytes({ annotations: { "io.containerd.runc.v2.group": 7 } }), "c1"), "c1");
  });
  it("reads the bytes of a view into a larger buffer only", () => {
    const whole = bytes(`xxxx${JSON.stringify({ annotations: { "io.containerd.runc.v2.group": "g" } })}`);
    assert.equal(shimGroupOf(whole.subarray(4), "c1"), "g");
  });
});

describe("canLaunchDirectly (berthd starts the runc v2 shim without its `start`)", () => {
  const runcOptions = (o: Partial<{ shimCgroup: string; binaryName: string }>) => ({
    typeUrl: "containerd.runc.v1.Options",
    value: toBinary(OptionsSchema, create(OptionsSchema, o)),
  });
  const shim = "/usr/bin/containerd-shim-runc-v2";
  it("the runc v2 shim, with or without runc options, is started directly", () => {
    assert.equal(canLaunchDirectly(shim, "io.containerd.runc.v2", undefined), true);
    assert.equal(canLaunchDirectly(shim, "io.containerd.runc.v2", runcOptions({ binaryName: "crun" })), true);
  });
  it("a shim cgroup in the options, which `start` moves the shim into, goes through `start`", () => {
    const opts = runcOptions({ shimCgroup: "/shims" });
    assert.equal(canLaunchDirectly(shim, "io.containerd.runc.v2", opts), false);
    assert.equal(
      canLaunchDirectly(shim, "io.containerd.runc.v2", { ...opts, typeUrl: `types.x/${opts.typeUrl}` }),
      false,
    );
  });
  it("another runtime or shim binary, or options that do not decode, go through `start`", () => {
    assert.equal(
      canLaunchDirectly("/usr/bin/containerd-shim-runsc-v1", "io.containerd.runsc.v1", undefined),
      false,
    );
    assert.equal(canLaunchDirectly("/opt/my-shim", "io.containerd.runc.v2", undefined), false);
    const bad = { typeUrl: "containerd.runc.v1.Options", value: Uint8Array.of(0xff, 0xff) };
    assert.equal(canLaunchDirectly(shim, "io.containerd.runc.v2", bad), false);
  });
  it("the shim's socket is derived as the runc v2 shim derives it", () => {
    const a = shimSocketAddress("/run/berth/berth.sock", "k8s.io", "pod1");
    assert.match(a, /^unix:\/\/\/run\/containerd\/s\/[0-9a-f]{64}$/);
    assert.notEqual(a, shimSocketAddress("/run/berth/berth.sock", "k8s.io", "pod2"));
    assert.notEqual(a, shimSocketAddress("/run/berth/berth.sock", "default", "pod1"));
    // Go's filepath.Join cleans the path, as path.join does
    assert.equal(a, shimSocketAddress("/run/berth//berth.sock", "k8s.io", "pod1"));
  });
});
