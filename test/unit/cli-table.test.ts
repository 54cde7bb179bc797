// The berth CLI's output helpers, checked against layouts the real ctr 1.6 printed.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { parseDuration } from "../../src/base/duration.js";
import { rechunk, validateDigest } from "../../src/cmd/berth/content.js";
import { eventJson, formatEventLine } from "../../src/cmd/berth/events.js";
import { randomLeaseId } from "../../src/cmd/berth/lease-scope.js";
import { formatPluginsDetailed, pluginStatus, prettyPlatforms } from "../../src/cmd/berth/plugins.js";
import {
  alignColumns,
  formatLabels,
  goTimeString,
  humanDuration,
  humanSize,
  parseLabelArgs,
  rfc3339Nano,
  SPACES,
  TABS,
  TabWriter,
  WIDE,
} from "../../src/cmd/berth/table.js";
import { ContentDeleteSchema } from "../../src/gen/containerd/events/content_pb.js";
import { NamespaceCreateSchema } from "../../src/gen/containerd/events/namespace_pb.js";
import { PluginSchema } from "../../src/gen/containerd/services/introspection/v1/introspection_pb.js";
import { EnvelopeSchema } from "../../src/gen/containerd/types/event_pb.js";
import { PlatformSchema } from "../../src/gen/containerd/types/platform_pb.js";

const D1 = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

describe("column alignment (ctr's tabwriter layouts)", () => {
  it("pads space-separated columns, including a tab-terminated last column", () => {
    const tw = new TabWriter().row("NAME", "LABELS", "").row("bar", "", "").row("foo", "a=b,c=d", "");
    assert.equal(tw.toString(), "NAME LABELS  \nbar          \nfoo  a=b,c=d \n");
  });

  it("pads with tabs to tab stops and leaves an unterminated last column alone", () => {
    const tw = new TabWriter(TABS)
      .write("DIGEST\tSIZE\tAGE\tLABELS\n")
      .row(D1, "6B", "Less than a second", "c=d,a=b");
    assert.equal(
      tw.toString(),
      `DIGEST${"\t".repeat(9)}SIZE\tAGE\t\t\tLABELS\n${D1}\t6B\tLess than a second\tc=d,a=b\n`,
    );
  });

  it("keeps a header-only table aligned", () => {
    assert.equal(new TabWriter(TABS).row("REF", "SIZE", "AGE", "").toString(), "REF\tSIZE\tAGE\t\n");
  });

  it("formats nested blocks like ctr plugins ls -d", () => {
    const plugins = [
      create(PluginSchema, {
        type: "io.containerd.snapshotter.v1",
        id: "aufs",
        platforms: [{ os: "linux", architecture: "amd64" }],
        exports: { root: "/r/aufs" },
        initErr: { code: 2, message: "aufs is not supported: skip plugin" },
      }),
      create(PluginSchema, {
        type: "io.containerd.snapshotter.v1",
        id: "native",
        platforms: [{ os: "linux", architecture: "amd64" }],
      }),
      create(PluginSchema, {
        type: "io.containerd.metadata.v1",
        id: "bolt",
        requires: ["io.containerd.content.v1", "io.containerd.snapshotter.v1"],
        exports: { policy: "shared", path: "/r/meta.db" },
      }),
    ];
    const want = [
      "Type:          io.containerd.snapshotter.v1",
      "ID:            aufs",
      "Platforms:     linux/amd64",
      "Exports:      ",
      "               root      /r/aufs",
      "Error:        ",
      "               Code:        Unknown",
      "               Message:     aufs is not supported: skip plugin",
      " ".repeat(31),
      "Type:          io.containerd.snapshotter.v1",
      "ID:            native",
      "Platforms:     linux/amd64",
      " ".repeat(22),
      "Type:          io.containerd.metadata.v1",
      "ID:            bolt",
      "Requires:     ",
      "               io.containerd.content.v1",
      "               io.containerd.snapshotter.v1",
      "Exports:      ",
      "               path        /r/meta.db",
      "               policy      shared",
      "",
    ].join("\n");
    assert.equal(formatPluginsDetailed(plugins), want);
  });

  it("aligns the plugin list with padding 4", () => {
    const tw = new TabWriter(WIDE)
      .row("TYPE", "ID", "PLATFORMS", "STATUS", "")
      .row("io.containerd.content.v1", "content", "-", "ok", "");
    assert.equal(
      tw.toString(),
      "TYPE                        ID         PLATFORMS    STATUS    \n" +
        "io.containerd.content.v1    content    -            ok        \n",
    );
  });

  it("starts a new section after a line without tabs", () => {
    assert.equal(alignColumns("a\tb\nxx\nlonger\tc\n", SPACES), "a b\nxx\nlonger c\n");
  });

  it("counts characters, not bytes", () => {
    assert.equal(new TabWriter().row("µµ", "x").row("abc", "y").toString(), "µµ  x\nabc y\n");
  });
});

describe("human sizes and ages", () => {
  it("uses decimal units with four significant digits", () => {
    assert.equal(humanSize(0), "0B");
    assert.equal(humanSize(6), "6B");
    assert.equal(humanSize(999), "999B");
    assert.equal(humanSize(1000), "1kB");
    assert.equal(humanSize(1234), "1.234kB");
    assert.equal(humanSize(12_345_678), "12.35MB");
    assert.equal(humanSize(999_960), "1000kB");
    assert.equal(humanSize(80_000_000n), "80MB");
  });

  it("words ages like ctr", () => {
    assert.equal(humanDuration(0), "Less than a second");
    assert.equal(humanDuration(1500), "1 second");
    assert.equal(humanDuration(18_000), "18 seconds");
    assert.equal(humanDuration(61_000), "About a minute");
    assert.equal(humanDuration(5 * 60_000), "5 minutes");
    assert.equal(humanDuration(60 * 60_000), "About an hour");
    assert.equal(humanDuration(89 * 60_000), "About an hour");
    assert.equal(humanDuration(3 * 3_600_000), "3 hours");
    assert.equal(humanDuration(3 * 86_400_000), "3 days");
    assert.equal(humanDuration(20 * 86_400_000), "2 weeks");
    assert.equal(humanDuration(90 * 86_400_000), "3 months");
    assert.equal(humanDuration(800 * 86_400_000), "2 years");
  });
});

describe("times", () => {
  it("prints envelope times like Go's time.Time String", () => {
    assert.equal(
      goTimeString({ seconds: 1795459956n, nanos: 840640382 }),
      "2026-11-23 18:52:36.840640382 +0000 UTC",
    );
    assert.equal(
      goTimeString({ seconds: 1795459956n, nanos: 718323410 }),
      "2026-11-23 18:52:36.71832341 +0000 UTC",
    );
    assert.equal(goTimeString({ seconds: 1795459956n, nanos: 0 }), "2026-11-23 18:52:36 +0000 UTC");
    assert.equal(rfc3339Nano({ seconds: 1795459956n, nanos: 500000000 }), "2026-11-23T18:52:36.5Z");
  });
});

describe("arguments", () => {
  it("parses Go durations", () => {
    assert.equal(parseDuration("0"), 0);
    assert.equal(parseDuration("10s"), 10_000);
    assert.equal(parseDuration("24h0m0s"), 86_400_000);
    assert.equal(parseDuration("1h30m"), 5_400_000);
    assert.equal(parseDuration("1.5s"), 1500);
    assert.equal(parseDuration("500ms"), 500);
    assert.throws(() => parseDuration("5"), /missing unit/);
    assert.throws(() => parseDuration("1x"), /invalid duration/);
    assert.throws(() => parseDuration(""), /invalid duration/);
  });

  it("parses labels; a bare key means true unless skipped", () => {
    assert.deepEqual(parseLabelArgs(["a=b", "c", "x=y=z", "e="]), { a: "b", c: "true", x: "y=z", e: "" });
    assert.deepEqual(parseLabelArgs(["a=b", "c"], "skip"), { a: "b" });
    assert.equal(formatLabels({ c: "d", a: "b" }), "a=b,c=d");
    assert.equal(formatLabels({}, "-"), "-");
  });

  it("validates digests with ctr's messages", () => {
    assert.equal(validateDigest(D1), D1);
    assert.throws(() => validateDigest("bad"), /^Error: invalid checksum digest format$/);
    assert.throws(() => validateDigest("abc:def"), /^Error: unsupported digest algorithm$/);
    assert.throws(() => validateDigest("sha256:abc"), /^Error: invalid checksum digest length$/);
    assert.throws(() => validateDigest(`sha256:${"A".repeat(64)}`), /invalid checksum digest format/);
    assert.throws(() => validateDigest("constructor:x"), /unsupported digest algorithm/);
  });

  it("generates lease ids shaped like ctr's", () => {
    assert.match(randomLeaseId(), /^\d{1,9}-[A-Za-z0-9_-]{4}$/);
  });
});

describe("ingest chunking", () => {
  it("re-cuts a stream into fixed-size chunks", async () => {
    async function* src() {
      yield Buffer.from("abc");
      yield Buffer.from("defgh");
      yield Buffer.from("");
      yield Buffer.from("ijklmnopq");
    }
    const out: string[] = [];
    for await (const c of rechunk(src(), 4)) out.push(c.toString());
    assert.deepEqual(out, ["abcd", "efgh", "ijkl", "mnop", "q"]);
  });
});

describe("plugins", () => {
  it("derives ok, skip and error from the init error", () => {
    assert.equal(pluginStatus({ initErr: undefined }), "ok");
    assert.equal(
      pluginStatus(create(PluginSchema, { initErr: { code: 2, message: "x: skip plugin" } })),
      "skip",
    );
    assert.equal(
      pluginStatus(create(PluginSchema, { initErr: { code: 2, message: "not configured" } })),
      "error",
    );
  });

  it("formats platforms sorted", () => {
    const ps = [
      create(PlatformSchema, { os: "linux", architecture: "arm64", variant: "v8" }),
      create(PlatformSchema, { os: "linux", architecture: "amd64" }),
      create(PlatformSchema, {}),
    ];
    assert.equal(prettyPlatforms(ps), "linux/amd64,linux/arm64/v8,unknown");
  });
});

describe("events", () => {
  it("prints known payloads as Go would marshal them", () => {
    const msg = create(NamespaceCreateSchema, { name: "evns", labels: { y: "2", x: "1<2&" } });
    assert.equal(eventJson(msg), '{"name":"evns","labels":{"x":"1\\u003c2\\u0026","y":"2"}}');
    assert.equal(eventJson(create(NamespaceCreateSchema, { name: "n" })), '{"name":"n"}');
  });

  it("prints ctr's line and falls back to the type URL", () => {
    const ts = { seconds: 1795459956n, nanos: 840640382 };
    const known = create(EnvelopeSchema, {
      timestamp: ts,
      namespace: "evns",
      topic: "/content/delete",
      event: anyPack(ContentDeleteSchema, create(ContentDeleteSchema, { digest: D1 })),
    });
    known.event!.typeUrl = "containerd.events.ContentDelete";
    assert.equal(
      formatEventLine(known),
      `2026-11-23 18:52:36.840640382 +0000 UTC evns /content/delete {"digest":"${D1}"}`,
    );
    const unknown = create(EnvelopeSchema, {
      timestamp: ts,
      namespace: "default",
      topic: "/x",
      event: { typeUrl: "foo.Bar", value: new Uint8Array([8, 1]) },
    });
    assert.equal(formatEventLine(unknown), "2026-11-23 18:52:36.840640382 +0000 UTC default /x foo.Bar");
  });
});
