// Issue "Images and registries" (first part): the Images service, driven by the real ctr pulling
// from the real Docker distribution registry, side by side with the real containerd doing the
// same. ctr 1.6 pulls client-side (resolve and fetch from the registry, Content/Write, Images
// Create/Update, unpack through Snapshots and Diff, all under a lease), so a pull that works and
// leaves the same records as containerd's exercises the whole daemon side of it.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create, fromBinary } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import type { BerthError } from "../../src/base/errdefs.js";
import {
  ImageCreateSchema,
  ImageDeleteSchema,
  ImageUpdateSchema,
} from "../../src/gen/containerd/events/image_pb.js";
import { Events } from "../../src/gen/containerd/services/events/v1/events_pb.js";
import { type Image, Images } from "../../src/gen/containerd/services/images/v1/images_pb.js";
import type { Envelope } from "../../src/gen/containerd/types/event_pb.js";
import { type Client, Connection } from "../../src/grpc/client.js";
import { CTR_BIN, ctr, ok, type RunResult } from "../helpers/ctr.js";
import { type Daemon, startBerthd, startContainerd } from "../helpers/daemons.js";
import { registryWithBusybox } from "../helpers/fixtures.js";
import { type BuiltImage, formatPlatform, MediaType } from "../helpers/images.js";
import type { Registry } from "../helpers/registry.js";
import { makeTempDir, removeTempDir, unmountAll } from "../helpers/tmp.js";

// No startup collection and no mutation-count trigger (deletions still trigger one), for both.
const GC_SCHEDULER = `[plugins."io.containerd.gc.v1.scheduler"]
  startup_delay = "0s"
  mutation_threshold = 0
`;
const REPO = "test/busybox";

type Side = { name: "berthd" | "containerd"; d: Daemon; conn: Connection };

/** Run ctr with a working directory (ctr images mount takes a relative target). */
function ctrIn(cwd: string, address: string, args: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(CTR_BIN, ["--address", address, ...args], { cwd, stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (c: Buffer) => out.push(c));
    child.stderr.on("data", (c: Buffer) => err.push(c));
    const start = Date.now();
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    child.once("error", reject);
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
        ms: Date.now() - start,
      });
    });
  });
}

/** `ctr content ls` rows without the AGE column, labels sorted (ctr prints a Go map). */
function contentRows(out: string): string[] {
  return out
    .trim()
    .split("\n")
    .slice(1)
    .filter((l) => l.trim() !== "")
    .map((l) => {
      const f = l.split("\t").filter((x) => x !== "");
      const labels = f.length > 3 ? f[f.length - 1]!.split(",").sort().join(",") : "";
      return `${f[0]} ${f[1]} ${labels}`;
    })
    .sort();
}

/** ctr's own log lines carry times; keep just the message part of stderr. */
const errText = (r: RunResult) =>
  r.stderr
    .split("\n")
    .filter((l) => l.startsWith("ctr: "))
    .join("\n");

function normImage(i: Image | undefined) {
  if (!i) return undefined;
  return {
    name: i.name,
    labels: i.labels,
    target: i.target && {
      mediaType: i.target.mediaType,
      digest: i.target.digest,
      size: String(i.target.size),
      annotations: i.target.annotations,
    },
  };
}

/** The result of a call, comparable across daemons: the normalised value or the error. */
async function outcome<T>(p: Promise<T>, norm: (v: T) => unknown = () => "ok"): Promise<unknown> {
  try {
    return { ok: norm(await p) };
  } catch (err) {
    const e = err as BerthError;
    return { error: e.kind ?? "?", message: e.message };
  }
}

const fakeDigest = (s: string) => {
  let h = "";
  for (let i = 0; h.length < 64; i++) h += ((s.charCodeAt(i % s.length) + i) % 16).toString(16);
  return `sha256:${h}`;
};

describe("images: real ctr pulls from the real registry, berthd beside containerd", () => {
  let reg: Registry;
  let single: BuiltImage;
  let multi: BuiltImage;
  let sides: Side[] = [];
  let tmp: string;
  let ref1: string;
  let refMulti: string;

  before(async () => {
    tmp = await makeTempDir("images-ctr");
    ({ reg, single, multi, ref1, refMulti } = await registryWithBusybox(REPO));
    const [b, c] = await Promise.all([
      startBerthd({ config: `version = 2\n${GC_SCHEDULER}` }),
      startContainerd({ config: GC_SCHEDULER }),
    ]);
    sides = [
      { name: "berthd", d: b, conn: new Connection(b.address) },
      { name: "containerd", d: c, conn: new Connection(c.address) },
    ];
  });

  after(async () => {
    for (const s of sides) s.conn.close();
    // anything a failed test left mounted under tmp goes before the daemons
    if (tmp) unmountAll(tmp);
    await Promise.all(sides.map((s) => s.d.cleanup()));
    await reg?.cleanup();
    if (tmp) await removeTempDir(tmp);
  });

  /** Run the same ctr command on both daemons; fail unless it succeeds on both. */
  async function onBoth(args: string[], namespace?: string): Promise<[string, string]> {
    const [a, b] = await Promise.all(
      sides.map(async (s) =>
        ok(await ctr(s.d.address, args, { namespace }), `${s.name}: ctr ${args.join(" ")}`),
      ),
    );
    return [a!, b!];
  }

  const berthd = () => sides[0]!;

  it("ctr images pull of a single-platform image", async () => {
    const [out] = await onBoth(["images", "pull", "--plain-http", ref1]);
    assert.match(out, new RegExp(`unpacking linux/amd64 ${single.target.digest}`));

    const [lsB, lsC] = await onBoth(["images", "ls"]);
    assert.equal(lsB, lsC, "ctr images ls reads the same");
    const row = lsB.split("\n").find((l) => l.startsWith(`${ref1} `));
    assert.ok(row, `listed: ${lsB}`);
    assert.deepEqual(row.trim().split(/\s+/), [
      ref1,
      MediaType.manifest,
      single.target.digest,
      "1.0",
      "MiB",
      "linux/amd64",
      "-",
    ]);

    // the record itself, through the API
    const [recB, recC] = await Promise.all(
      sides.map(async (s) =>
        normImage((await s.conn.client(Images).get({ name: ref1 }, { namespace: "default" })).image),
      ),
    );
    assert.deepEqual(recB, recC);
    assert.deepEqual(recB?.target, {
      mediaType: MediaType.manifest,
      digest: single.target.digest,
      size: String(single.target.size),
      annotations: {},
    });

    const [cB, cC] = await onBoth(["content", "ls"]);
    assert.deepEqual(contentRows(cB), contentRows(cC), "content ls: digests, sizes, labels");
    const p = single.platforms[0]!;
    assert.deepEqual(
      contentRows(cB).map((r) => r.split(" ")[0]),
      [p.manifest.digest, p.config.digest, p.layers[0]!.digest].sort(),
    );
    const [sB, sC] = await onBoth(["snapshots", "ls"]);
    assert.equal(sB, sC);
    assert.match(sB, /^sha256:[0-9a-f]{64}\s+Committed/m);

    const [chkB, chkC] = await onBoth(["images", "check"]);
    assert.equal(chkB, chkC, "ctr images check reads the same");
    assert.match(chkB, /complete \(2\/2\) .* true$/m, "manifest and config counted, unpacked");
  });

  it("ctr images pull --all-platforms of a two-platform index", async () => {
    const [out] = await onBoth(["images", "pull", "--plain-http", "--all-platforms", refMulti]);
    for (const p of multi.platforms)
      assert.match(out, new RegExp(`unpacking ${formatPlatform(p.platform)} ${multi.target.digest}`));
    const [lsB, lsC] = await onBoth(["images", "ls"]);
    assert.equal(lsB, lsC);
    const row = lsB.split("\n").find((l) => l.startsWith(`${refMulti} `));
    assert.ok(row);
    assert.deepEqual(row.trim().split(/\s+/).slice(1, 3).concat(row.trim().split(/\s+/).slice(5)), [
      MediaType.index,
      multi.target.digest,
      "linux/amd64,linux/arm64/v8",
      "-",
    ]);
    const [cB, cC] = await onBoth(["content", "ls"]);
    assert.deepEqual(contentRows(cB), contentRows(cC));
    assert.deepEqual(
      contentRows(cB).map((r) => r.split(" ")[0]),
      multi.blobs.map((b) => b.digest).sort(),
      "every blob of the index, once",
    );
    const [sB, sC] = await onBoth(["snapshots", "ls"]);
    assert.equal(sB, sC, "the arm64 manifest shares the layer: still one snapshot");
    const [chkB, chkC] = await onBoth(["images", "check"]);
    assert.equal(chkB, chkC);
  });

  it("ctr images tag, label, ls filters and rm read the same", async () => {
    const alias = `${reg.host}/${REPO}:alias`;
    await onBoth(["images", "tag", ref1, alias]);
    const [dupB, dupC] = await Promise.all(
      sides.map((s) => ctr(s.d.address, ["images", "tag", ref1, alias])),
    );
    assert.notEqual(dupB!.code, 0);
    assert.equal(errText(dupB!), errText(dupC!), "tagging onto an existing name fails alike");
    await onBoth(["images", "tag", "--force", refMulti, alias]);
    await onBoth(["images", "label", alias, "color=blue", "shape=round"]);
    await onBoth(["images", "label", alias, "shape="]);
    for (const args of [
      ["images", "ls"],
      ["images", "ls", "-q"],
      ["images", "ls", "labels.color==blue"],
      ["images", "ls", "-q", `name~=:1$`],
      ["images", "ls", "-q", `target.mediatype==${MediaType.index}`],
      ["images", "ls", "-q", `target.digest==${single.target.digest}`],
      ["images", "ls", "-q", "labels.shape"],
    ]) {
      const [b, c] = await onBoth(args);
      assert.equal(b, c, `ctr ${args.join(" ")}`);
    }
    const [filtered] = await onBoth(["images", "ls", "-q", "labels.color==blue"]);
    assert.equal(filtered.trim(), alias);
    const [rmB, rmC] = await onBoth(["images", "rm", alias, "no-such-image"]);
    assert.equal(rmB, rmC);
    const [badB, badC] = await Promise.all(sides.map((s) => ctr(s.d.address, ["images", "ls", "name=="])));
    assert.notEqual(badB!.code, 0);
    assert.equal(errText(badB!), errText(badC!), "filter syntax errors read the same");
  });

  it("ctr images mount shows the layer's files, unmount --rm releases them", async () => {
    for (const s of sides) {
      // a relative target: ctr uses it as the lease id too (see the next test)
      const cwd = join(tmp, s.name);
      mkdirSync(join(cwd, "mnt"), { recursive: true });
      const out = ok(await ctrIn(cwd, s.d.address, ["images", "mount", ref1, "mnt"]), `${s.name}: mount`);
      assert.match(out, /^sha256:[0-9a-f]{64}\nmnt\n$/);
      try {
        const mnt = join(cwd, "mnt");
        assert.deepEqual(readdirSync(join(mnt, "bin")).sort(), ["busybox", "cat", "echo", "ls", "sh"]);
        assert.equal(realpathSync(join(mnt, "bin/sh")), join(realpathSync(mnt), "bin/busybox"));
        assert.equal(
          readFileSync(join(mnt, "bin/busybox")).equals(readFileSync("/bin/busybox")),
          true,
          "busybox bytes",
        );
        assert.match(readFileSync(join(mnt, "etc/passwd"), "utf8"), /^root:x:0:0:/);
        const snaps = ok(await ctr(s.d.address, ["snapshots", "ls"]));
        assert.match(snaps, /^mnt\s+sha256:[0-9a-f]{64}\s+View/m, `${s.name}: a view named after the target`);
        assert.match(ok(await ctr(s.d.address, ["leases", "ls", "-q"])), /^mnt$/m);
      } finally {
        ok(await ctrIn(cwd, s.d.address, ["images", "unmount", "--rm", "mnt"]), `${s.name}: unmount`);
      }
      assert.doesNotMatch(ok(await ctr(s.d.address, ["snapshots", "ls"])), /^mnt\s/m);
      assert.doesNotMatch(ok(await ctr(s.d.address, ["leases", "ls", "-q"])), /^mnt$/m);
    }
  });

  it("ctr images mount to an absolute path (the path becomes a lease id)", async () => {
    const mnt = join(tmp, "abs-mnt");
    mkdirSync(mnt, { recursive: true });
    try {
      ok(await ctr(berthd().d.address, ["images", "mount", ref1, mnt]), "mount");
      assert.ok(existsSync(join(mnt, "bin/busybox")));
    } finally {
      await ctr(berthd().d.address, ["images", "unmount", "--rm", mnt]);
    }
  });

  it("a namespace holding an image cannot be removed; it can once the image is gone", async () => {
    await onBoth(["images", "pull", "--plain-http", ref1], "holds");
    const [b, c] = await Promise.all(sides.map((s) => ctr(s.d.address, ["namespaces", "rm", "holds"])));
    assert.notEqual(b!.code, 0);
    assert.equal(errText(b!), errText(c!));
    assert.match(
      errText(b!),
      /namespace "holds" must be empty, but it still has images, blobs, snapshots on "overlayfs" snapshotter/,
    );
    await onBoth(["images", "rm", "--sync", ref1], "holds");
    const [cb, cc] = await onBoth(["content", "ls", "-q"], "holds");
    assert.equal(cb, cc);
    assert.equal(cb.trim(), "", "a sync delete collected the namespace's blobs");
    await onBoth(["namespaces", "rm", "holds"]);
  });

  it("the Images API answers like containerd's (errors included)", async () => {
    const ns = { namespace: "api" };
    const good = (
      name: string,
      extra: Partial<{ mediaType: string; labels: Record<string, string> }> = {},
    ) => ({
      image: {
        name,
        labels: extra.labels ?? {},
        target: {
          mediaType: extra.mediaType ?? MediaType.manifest,
          digest: fakeDigest(name),
          size: 1234n,
          annotations: { "org.example/note": "n", empty: "" },
        },
      },
    });
    type Call = (c: Client<typeof Images>) => Promise<unknown>;
    const cases: [string, Call][] = [
      ["create without image", (c) => outcome(c.create({}, ns))],
      ["create without name", (c) => outcome(c.create({ image: { name: "" } }, ns))],
      ["create without target", (c) => outcome(c.create({ image: { name: "x" } }, ns))],
      [
        "create with a short digest",
        (c) =>
          outcome(
            c.create(
              { image: { name: "x", target: { mediaType: "m", digest: "sha256:abc", size: 1n } } },
              ns,
            ),
          ),
      ],
      [
        "create with an unknown algorithm",
        (c) =>
          outcome(
            c.create({ image: { name: "x", target: { mediaType: "m", digest: "md5:abc", size: 1n } } }, ns),
          ),
      ],
      [
        "create with size 0",
        (c) =>
          outcome(
            c.create(
              { image: { name: "x", target: { mediaType: "m", digest: fakeDigest("x"), size: 0n } } },
              ns,
            ),
          ),
      ],
      [
        "create without media type",
        (c) => outcome(c.create({ image: { name: "x", target: { digest: fakeDigest("x"), size: 5n } } }, ns)),
      ],
      [
        "create with an oversized label",
        (c) => outcome(c.create(good("x", { labels: { big: "v".repeat(5000) } }), ns)),
      ],
      [
        "create a",
        (c) =>
          outcome(c.create(good("a", { labels: { x: "1", gone: "" } }), ns), (r) =>
            normImage((r as { image?: Image }).image),
          ),
      ],
      [
        "create b/c:tag",
        (c) =>
          outcome(c.create(good("b/c:tag", { mediaType: MediaType.index, labels: { y: "2" } }), ns), (r) =>
            normImage((r as { image?: Image }).image),
          ),
      ],
      ["create a again", (c) => outcome(c.create(good("a"), ns))],
      ["get a", (c) => outcome(c.get({ name: "a" }, ns), (r) => normImage((r as { image?: Image }).image))],
      ["get missing", (c) => outcome(c.get({ name: "missing" }, ns))],
      ["get without namespace", (c) => outcome(c.get({ name: "a" }, {}))],
      ["update without name", (c) => outcome(c.update({ image: { name: "" } }, ns))],
      ["update missing", (c) => outcome(c.update(good("missing"), ns))],
      [
        "update a labels.x labels.z",
        (c) =>
          outcome(
            c.update(
              { image: { name: "a", labels: { z: "3" } }, updateMask: { paths: ["labels.x", "labels.z"] } },
              ns,
            ),
            (r) => normImage((r as { image?: Image }).image),
          ),
      ],
      [
        "update a annotations.extra",
        (c) =>
          outcome(
            c.update(
              {
                image: { name: "a", target: { annotations: { extra: "e" } } },
                updateMask: { paths: ["annotations.extra", "annotations.org.example/note"] },
              },
              ns,
            ),
            (r) => normImage((r as { image?: Image }).image),
          ),
      ],
      [
        "update a name field",
        (c) => outcome(c.update({ image: { name: "a" }, updateMask: { paths: ["name"] } }, ns)),
      ],
      [
        "update a to a bad target",
        (c) =>
          outcome(
            c.update(
              {
                image: { name: "a", target: { mediaType: "m", digest: "nope", size: 1n } },
                updateMask: { paths: ["target"] },
              },
              ns,
            ),
          ),
      ],
      [
        "update a replacing all",
        (c) =>
          outcome(c.update(good("a", { labels: { w: "4" } }), ns), (r) =>
            normImage((r as { image?: Image }).image),
          ),
      ],
      [
        "update a labels (replace)",
        (c) =>
          outcome(
            c.update({ image: { name: "a", labels: { v: "5" } }, updateMask: { paths: ["labels"] } }, ns),
            (r) => normImage((r as { image?: Image }).image),
          ),
      ],
      ...[
        [],
        ["name==a"],
        ["labels.y==2"],
        ["labels.v"],
        ["name==a", "name==b/c:tag"],
        [`target.mediatype==${MediaType.index}`],
        [`target.digest==${fakeDigest("a")}`],
        ['annotations."org.example/note"==n'],
        ["name~=^b/"],
        ["name!=a"],
        ["size==1234"],
        ["name=="],
        ['labels."y"==2,name==b/c:tag'],
      ].map((filters): [string, Call] => [
        `list ${JSON.stringify(filters)}`,
        (c) => outcome(c.list({ filters }, ns), (r) => (r as { images: Image[] }).images.map(normImage)),
      ]),
      ["delete missing", (c) => outcome(c.delete({ name: "missing" }, ns))],
      ["delete a", (c) => outcome(c.delete({ name: "a" }, ns))],
      ["get a after delete", (c) => outcome(c.get({ name: "a" }, ns))],
      ["delete b/c:tag (sync)", (c) => outcome(c.delete({ name: "b/c:tag", sync: true }, ns))],
      ["list after deletes", (c) => outcome(c.list({}, ns), (r) => (r as { images: Image[] }).images.length)],
    ];
    const clients = sides.map((s) => s.conn.client(Images));
    for (const [what, call] of cases) {
      const [b, c] = [await call(clients[0]!), await call(clients[1]!)];
      assert.deepEqual(b, c, `${what}: berthd ${JSON.stringify(b)} vs containerd ${JSON.stringify(c)}`);
    }
  });

  it("delete with a target deletes only while the image still points there (containerd 2.x)", async () => {
    const c = berthd().conn.client(Images);
    const ns = { namespace: "api" };
    const target = { mediaType: MediaType.manifest, digest: fakeDigest("t"), size: 9n };
    await c.create({ image: { name: "t", target } }, ns);
    await assert.rejects(c.delete({ name: "t", target: { ...target, digest: fakeDigest("other") } }, ns), {
      message: `image "t" has target ${fakeDigest("t")}, not ${fakeDigest("other")}: not found`,
    });
    await c.get({ name: "t" }, ns);
    await c.delete({ name: "t", target }, ns);
    await assert.rejects(c.get({ name: "t" }, ns), { message: 'image "t": not found' });
  });

  it("publishes /images/create, /images/update, /images/delete like containerd", async () => {
    const ns = { namespace: "events" };
    const seen = await Promise.all(
      sides.map(async (s) => {
        const ac = new AbortController();
        const got: Envelope[] = [];
        const stream = s.conn
          .client(Events)
          .subscribe({ filters: ['namespace==events,topic~="^/images/"'] }, { signal: ac.signal });
        const pump = (async () => {
          try {
            for await (const e of stream) got.push(e);
          } catch {
            // aborted
          }
        })();
        const events = s.conn.client(Events);
        // a marker event proves the subscription is live before the calls, another that all arrived
        const mark = async (name: string) => {
          for (
            let i = 0;
            i < 100 && !got.some((e) => e.topic === "/images/mark" && markName(e) === name);
            i++
          ) {
            await events.publish(
              {
                topic: "/images/mark",
                event: anyPack(ImageDeleteSchema, create(ImageDeleteSchema, { name })),
              },
              ns,
            );
            await new Promise((r) => setTimeout(r, 50));
          }
        };
        await mark("start");
        const images = s.conn.client(Images);
        const target = { mediaType: MediaType.manifest, digest: fakeDigest("ev"), size: 3n };
        await images.create({ image: { name: "ev", labels: { a: "1" }, target } }, ns);
        await images.update(
          { image: { name: "ev", labels: { b: "2" } }, updateMask: { paths: ["labels.b"] } },
          ns,
        );
        await images.delete({ name: "ev" }, ns);
        await mark("end");
        ac.abort();
        await pump;
        return got
          .filter((e) => e.topic !== "/images/mark")
          .map((e) => ({ namespace: e.namespace, topic: e.topic, payload: payload(e) }));
      }),
    );
    assert.deepEqual(seen[0], seen[1]);
    assert.deepEqual(
      seen[0]!.map((e) => e.topic),
      ["/images/create", "/images/update", "/images/delete"],
    );
    assert.deepEqual(seen[0]![1]!.payload, { name: "ev", labels: { a: "1", b: "2" } });
  });

  it("ctr images rm and a collection free the blobs and snapshots", async () => {
    // rm of the single-platform image: its blobs are the index's amd64 part, still referenced
    await onBoth(["images", "rm", ref1]);
    await onBoth(["leases", "create", "--id", "trigger"]);
    await onBoth(["leases", "rm", "--sync", "trigger"]);
    const [keptB, keptC] = await onBoth(["content", "ls"]);
    assert.deepEqual(contentRows(keptB), contentRows(keptC));
    assert.equal(contentRows(keptB).length, multi.blobs.length, "the index still holds every blob");
    const [sB, sC] = await onBoth(["snapshots", "ls"]);
    assert.equal(sB, sC);
    assert.match(sB, /Committed/);

    // a sync rm of the last image answers only after the collection
    await onBoth(["images", "rm", "--sync", refMulti]);
    const [cB, cC] = await onBoth(["content", "ls", "-q"]);
    assert.equal(cB, cC);
    assert.equal(cB.trim(), "", "no blobs left");
    const [snB, snC] = await onBoth(["snapshots", "ls"]);
    assert.equal(snB, snC);
    assert.equal(snB.trim().split("\n").length, 1, "no snapshots left");
    const [lsB, lsC] = await onBoth(["images", "ls", "-q"]);
    assert.equal(lsB, lsC);
    assert.equal(lsB.trim(), "");

    // and on disk: no blob files, no snapshot directories
    const root = berthd().d.root;
    const blobs = join(root, "io.containerd.content.v1.content", "blobs", "sha256");
    assert.deepEqual(existsSync(blobs) ? readdirSync(blobs) : [], []);
    const snapDirs = join(root, "io.containerd.snapshotter.v1.overlayfs", "snapshots");
    // the overlay snapshotter may remove directories in the background: give it a moment
    let left: string[] = [];
    for (let i = 0; i < 50; i++) {
      left = existsSync(snapDirs) ? readdirSync(snapDirs) : [];
      if (left.length === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(left, []);
  });
});

function markName(e: Envelope): string {
  return e.event ? fromBinary(ImageDeleteSchema, e.event.value).name : "";
}

function payload(e: Envelope): unknown {
  if (!e.event) return undefined;
  switch (e.topic) {
    case "/images/create": {
      const m = fromBinary(ImageCreateSchema, e.event.value);
      return { name: m.name, labels: m.labels };
    }
    case "/images/update": {
      const m = fromBinary(ImageUpdateSchema, e.event.value);
      return { name: m.name, labels: m.labels };
    }
    case "/images/delete":
      return { name: fromBinary(ImageDeleteSchema, e.event.value).name };
    default:
      return { typeUrl: e.event.typeUrl };
  }
}
