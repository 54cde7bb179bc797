import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { shimGroupOf } from "../../src/core/runtime/shim-group.js";

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
