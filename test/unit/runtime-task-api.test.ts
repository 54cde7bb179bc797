// The plain-value side of the Task API (no shim needed): status names and numbers, nanosecond
// timestamps, Any packing, and the errdefs helpers the Tasks service sends its texts with.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import { BerthError, errNotFound, errorf, toGrpcStatus, wrap } from "../../src/base/errdefs.js";
import {
  exitStatusOf,
  nsDate,
  specBytes,
  statusName,
  statusNumber,
  timestampNs,
  toAny,
} from "../../src/core/runtime/process.js";
import { PROCESS_SPEC_TYPE_URL } from "../../src/core/runtime/task.js";

describe("runtime Task API values", () => {
  it("maps containerd.v1.types.Status both ways", () => {
    const names = ["unknown", "created", "running", "stopped", "paused", "pausing"] as const;
    names.forEach((n, i) => {
      assert.equal(statusName(i), n);
      assert.equal(statusNumber(n), i);
    });
    assert.equal(statusName(42), "unknown");
  });

  it("keeps exit times to the nanosecond, the zero time included", () => {
    const ts = create(TimestampSchema, { seconds: 1_700_000_000n, nanos: 123_456_789 });
    assert.equal(timestampNs(ts), 1_700_000_000_123_456_789n);
    const e = exitStatusOf(137, ts);
    assert.equal(e.exitStatus, 137);
    assert.equal(e.exitedAt?.getTime(), 1_700_000_000_123);
    const zero = create(TimestampSchema, { seconds: -62_135_596_800n, nanos: 0 });
    assert.equal(exitStatusOf(0, zero).exitedAt?.toISOString(), "0001-01-01T00:00:00.000Z");
    assert.equal(nsDate(-1n).getTime(), -1, "rounds down before the epoch");
    assert.deepEqual(exitStatusOf(3, undefined), { exitStatus: 3 });
  });

  it("packs JSON objects as Any and passes an Any through", () => {
    const a = toAny({ args: ["true"] }, PROCESS_SPEC_TYPE_URL);
    assert.equal(a?.typeUrl, PROCESS_SPEC_TYPE_URL);
    assert.equal(Buffer.from(a!.value).toString(), '{"args":["true"]}');
    const raw = { typeUrl: "x/y", value: new Uint8Array([1, 2]) };
    assert.deepEqual(toAny(raw, PROCESS_SPEC_TYPE_URL), raw);
    assert.equal(toAny(undefined, PROCESS_SPEC_TYPE_URL), undefined);
    assert.deepEqual(specBytes(raw), raw.value);
    assert.equal(Buffer.from(specBytes({ a: 1 })!).toString(), '{"a":1}');
  });
});

describe("errdefs errorf and wrap", () => {
  it("errorf sends its message as is, with the kind's code", () => {
    const e = errorf("not found", "task x not found");
    assert.ok(e instanceof BerthError);
    assert.equal(e.message, "task x not found");
    assert.deepEqual(toGrpcStatus(e), { code: 5, message: "task x not found" });
  });

  it("wrap prefixes and keeps the kind, or the errno code", () => {
    const inner = errNotFound("blob sha256:1");
    const w = wrap(inner, "could not get status");
    assert.ok(w instanceof BerthError && w.kind === "not found");
    assert.equal(w.message, "could not get status: blob sha256:1: not found");
    assert.equal(w.cause, inner);
    const enoent = Object.assign(new Error("open /x: no such file"), { code: "ENOENT" });
    const we = wrap(enoent, "reading");
    assert.equal(we.message, "reading: open /x: no such file");
    assert.equal(toGrpcStatus(we).code, 5);
    assert.equal(wrap("plain", "p").message, "p: plain");
  });
});
