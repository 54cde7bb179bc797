// Reference parsing and normalisation, table-driven, against Docker's and containerd's rules.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BerthError } from "../../src/base/errdefs.js";
import {
  familiarString,
  formatReference,
  isLocalhost,
  parseNormalized,
  parseReference,
  referenceObject,
} from "../../src/core/reference.js";

const D = `sha256:${"a".repeat(64)}`;

describe("reference normalisation", () => {
  const cases: [input: string, full: string, familiar: string, domain: string, path: string][] = [
    ["busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox"],
    ["busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36", "docker.io", "library/busybox"],
    ["user/app", "docker.io/user/app:latest", "user/app:latest", "docker.io", "user/app"],
    [
      "docker.io/library/busybox",
      "docker.io/library/busybox:latest",
      "busybox:latest",
      "docker.io",
      "library/busybox",
    ],
    ["index.docker.io/user/app:v1", "docker.io/user/app:v1", "user/app:v1", "docker.io", "user/app"],
    [
      "docker.io/library/a/b",
      "docker.io/library/a/b:latest",
      "library/a/b:latest",
      "docker.io",
      "library/a/b",
    ],
    [`busybox@${D}`, `docker.io/library/busybox@${D}`, `busybox@${D}`, "docker.io", "library/busybox"],
    [`busybox:1@${D}`, `docker.io/library/busybox:1@${D}`, `busybox:1@${D}`, "docker.io", "library/busybox"],
    ["localhost/app", "localhost/app:latest", "localhost/app:latest", "localhost", "app"],
    ["localhost:5000/a/b:t", "localhost:5000/a/b:t", "localhost:5000/a/b:t", "localhost:5000", "a/b"],
    [
      "127.0.0.1:5000/test/busybox",
      "127.0.0.1:5000/test/busybox:latest",
      "127.0.0.1:5000/test/busybox:latest",
      "127.0.0.1:5000",
      "test/busybox",
    ],
    ["[::1]:5000/app:x", "[::1]:5000/app:x", "[::1]:5000/app:x", "[::1]:5000", "app"],
    ["[fe80::1]/app", "[fe80::1]/app:latest", "[fe80::1]/app:latest", "[fe80::1]", "app"],
    [
      "registry.example.com/a/b/c:v1.2_3-x",
      "registry.example.com/a/b/c:v1.2_3-x",
      "registry.example.com/a/b/c:v1.2_3-x",
      "registry.example.com",
      "a/b/c",
    ],
    ["Host.Example:443/x", "Host.Example:443/x:latest", "Host.Example:443/x:latest", "Host.Example:443", "x"],
    ["a__b/c.d-e", "docker.io/a__b/c.d-e:latest", "a__b/c.d-e:latest", "docker.io", "a__b/c.d-e"],
    ["a---b", "docker.io/library/a---b:latest", "a---b:latest", "docker.io", "library/a---b"],
  ];
  for (const [input, full, familiar, domain, path] of cases) {
    it(input, () => {
      const r = parseNormalized(input);
      assert.equal(formatReference(r), full);
      assert.equal(familiarString(r), familiar);
      assert.equal(r.domain, domain);
      assert.equal(r.path, path);
      // round trip: the familiar and the full form parse back to the same reference
      assert.deepEqual(parseNormalized(familiar), r);
      assert.deepEqual(parseNormalized(full), r);
    });
  }

  it("keeps no tag when only a digest is given, and formats containerd's object part", () => {
    const r = parseNormalized(`h:1/x@${D}`);
    assert.equal(r.tag, undefined);
    assert.equal(referenceObject(r), `@${D}`);
    assert.equal(referenceObject(parseNormalized(`x:t@${D}`)), `t@${D}`);
    assert.equal(parseReference("x").tag, undefined);
  });
});

describe("reference errors", () => {
  const bad: [input: string, mention: RegExp][] = [
    ["", /empty reference/],
    ["Busybox", /must be lowercase/],
    ["user/App", /must be lowercase/],
    ["docker.io/User/app", /must be lowercase/],
    ["busybox:", /tag "" must be/],
    ["busybox:-x", /tag "-x" must be/],
    ["busybox:.x", /tag ".x" must be/],
    [`busybox:${"t".repeat(129)}`, /tag .* must be 1 to 128/],
    ["busybox:a+b", /tag "a\+b"/],
    ["busybox@sha256:abc", /sha256 digest must be 64 lowercase hex/],
    [`busybox@sha256:${"A".repeat(64)}`, /lowercase hex/],
    [`busybox@md5:${"a".repeat(32)}`, /algorithm "md5" is not supported/],
    ["busybox@nonsense", /is not <algorithm>:<hex>/],
    ["a//b", /path component "" must be/],
    ["a/-b", /path component "-b"/],
    ["a/b_", /path component "b_"/],
    ["-host.com/a", /registry host "-host.com" is not valid/],
    ["host.com:port/a", /registry host "host.com:port"|tag/],
    ["host.com/", /repository path is empty|path component/],
    [" busybox", /whitespace/],
    ["busy box", /whitespace/],
    [`x.io/${"a".repeat(260)}`, /longer than 255/],
  ];
  for (const [input, mention] of bad) {
    it(JSON.stringify(input.slice(0, 40)), () => {
      assert.throws(
        () => parseNormalized(input),
        (err: unknown) => {
          assert.ok(err instanceof BerthError, String(err));
          assert.equal(err.kind, "invalid argument");
          assert.match(err.message, mention);
          assert.ok(err.message.includes("invalid reference"), err.message);
          return true;
        },
      );
    });
  }
});

describe("isLocalhost", () => {
  for (const [h, want] of [
    ["localhost", true],
    ["localhost:5000", true],
    ["127.0.0.1", true],
    ["127.0.0.1:5000", true],
    ["127.1.2.3:1", true],
    ["[::1]:5000", true],
    ["[::1]", true],
    ["docker.io", false],
    ["10.0.0.1:5000", false],
    ["localhost.example.com", false],
  ] as const) {
    it(`${h} → ${want}`, () => assert.equal(isLocalhost(h), want));
  }
});
