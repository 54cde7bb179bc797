// Issue "Containers and tasks" (first part): the Containers service, driven by the real ctr and
// by a typed client, side by side with the real containerd doing the same. ctr builds the spec
// and prepares the snapshot client-side, so `ctr containers create` over a pulled image exercises
// Images/Get, Content/Read, Snapshots/Prepare and Containers/Create together.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import type { BerthError } from "../../src/base/errdefs.js";
import {
  ContainerCreateSchema,
  ContainerDeleteSchema,
  ContainerUpdateSchema,
} from "../../src/gen/containerd/events/container_pb.js";
import { type Container, Containers } from "../../src/gen/containerd/services/containers/v1/containers_pb.js";
import { Events } from "../../src/gen/containerd/services/events/v1/events_pb.js";
import type { Envelope } from "../../src/gen/containerd/types/event_pb.js";
import { type Client, Connection } from "../../src/grpc/client.js";
import { ctr, ok, type RunResult } from "../helpers/ctr.js";
import { type Daemon, startBerthd, startContainerd } from "../helpers/daemons.js";
import { buildBusyboxImage, pushImage } from "../helpers/images.js";
import { type Registry, startRegistry } from "../helpers/registry.js";

// No startup collection and no mutation-count trigger, for both; collections are forced with
// sync deletes where a test needs one.
const GC_SCHEDULER = `[plugins."io.containerd.gc.v1.scheduler"]
  startup_delay = "0s"
  mutation_threshold = 0
`;
const REPO = "test/busybox";
const SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

type Side = { name: "berthd" | "containerd"; d: Daemon; conn: Connection };

const errText = (r: RunResult) =>
  r.stderr
    .split("\n")
    .filter((l) => l.startsWith("ctr: "))
    .join("\n");

/** `ctr c info` JSON without the times (they differ by daemon and by run). */
function infoNoTimes(out: string): unknown {
  const j = JSON.parse(out) as Record<string, unknown>;
  assert.match(String(j.CreatedAt), /^\d{4}-\d\d-\d\dT/);
  assert.match(String(j.UpdatedAt), /^\d{4}-\d\d-\d\dT/);
  delete j.CreatedAt;
  delete j.UpdatedAt;
  return j;
}

function normContainer(c: Container | undefined) {
  if (!c) return undefined;
  const any = (a: { typeUrl: string; value: Uint8Array } | undefined) =>
    a && { typeUrl: a.typeUrl, value: Buffer.from(a.value).toString("base64") };
  const ext: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(c.extensions)) ext[k] = any(v);
  return {
    id: c.id,
    labels: c.labels,
    image: c.image,
    runtime: c.runtime && { name: c.runtime.name, options: any(c.runtime.options) },
    spec: any(c.spec),
    snapshotter: c.snapshotter,
    snapshotKey: c.snapshotKey,
    extensions: ext,
    times: Boolean(c.createdAt && c.updatedAt && c.createdAt.seconds > 0n),
  };
}

async function outcome<T>(p: Promise<T>, norm: (v: T) => unknown = () => "ok"): Promise<unknown> {
  try {
    return { ok: norm(await p) };
  } catch (err) {
    const e = err as BerthError;
    return { error: e.kind ?? "?", message: e.message };
  }
}

describe("containers: real ctr and a typed client, berthd beside containerd", () => {
  let reg: Registry;
  let sides: Side[] = [];
  let ref: string;

  before(async () => {
    reg = await startRegistry();
    await pushImage(reg.url, REPO, "1", buildBusyboxImage());
    ref = `${reg.host}/${REPO}:1`;
    const [b, c] = await Promise.all([
      startBerthd({ config: `version = 2\n${GC_SCHEDULER}` }),
      startContainerd({ config: GC_SCHEDULER }),
    ]);
    sides = [
      { name: "berthd", d: b, conn: new Connection(b.address) },
      { name: "containerd", d: c, conn: new Connection(c.address) },
    ];
    await onBoth(["images", "pull", "--plain-http", ref]);
  });

  after(async () => {
    for (const s of sides) s.conn.close();
    await Promise.all(sides.map((s) => s.d.cleanup()));
    await reg?.cleanup();
  });

  async function onBoth(args: string[], namespace?: string): Promise<[string, string]> {
    const [a, b] = await Promise.all(
      sides.map(async (s) =>
        ok(await ctr(s.d.address, args, { namespace }), `${s.name}: ctr ${args.join(" ")}`),
      ),
    );
    return [a!, b!];
  }

  async function bothFail(args: string[], namespace?: string): Promise<string> {
    const [b, c] = await Promise.all(sides.map((s) => ctr(s.d.address, args, { namespace })));
    assert.notEqual(b!.code, 0, `berthd: ctr ${args.join(" ")} should fail`);
    assert.notEqual(c!.code, 0, `containerd: ctr ${args.join(" ")} should fail`);
    assert.equal(errText(b!), errText(c!), `ctr ${args.join(" ")}: same error`);
    return errText(b!);
  }

  /** Container events seen on each side while fn runs, decoded, in order. */
  async function containerEvents(fn: () => Promise<void>): Promise<[unknown[], unknown[]]> {
    const acs = sides.map(() => new AbortController());
    const seen: unknown[][] = sides.map(() => []);
    const loops = sides.map(async (s, i) => {
      const stream = s.conn
        .client(Events)
        .subscribe({ filters: ['topic~="^/containers/"'] }, { signal: acs[i]!.signal });
      try {
        for await (const e of stream) seen[i]!.push(decodeEvent(e));
      } catch {
        // aborted
      }
    });
    // give both subscriptions time to be registered
    await new Promise((r) => setTimeout(r, 500));
    await fn();
    await new Promise((r) => setTimeout(r, 500));
    for (const ac of acs) ac.abort();
    await Promise.all(loops);
    return [seen[0]!, seen[1]!];
  }

  function decodeEvent(e: Envelope): unknown {
    const v = e.event?.value ?? new Uint8Array();
    const base = { ns: e.namespace, topic: e.topic, type: e.event?.typeUrl };
    switch (e.event?.typeUrl) {
      case "containerd.events.ContainerCreate": {
        const m = fromBinary(ContainerCreateSchema, v);
        return {
          ...base,
          id: m.id,
          image: m.image,
          runtime: m.runtime?.name,
          options: m.runtime?.options?.typeUrl,
        };
      }
      case "containerd.events.ContainerUpdate": {
        const m = fromBinary(ContainerUpdateSchema, v);
        return { ...base, id: m.id, image: m.image, labels: m.labels, snapshotKey: m.snapshotKey };
      }
      case "containerd.events.ContainerDelete":
        return { ...base, id: fromBinary(ContainerDeleteSchema, v).id };
      default:
        return base;
    }
  }

  it("ctr containers create / ls / info / label / rm read the same, with the same events", async () => {
    const [evB, evC] = await containerEvents(async () => {
      await onBoth(["containers", "create", "--label", "color=red", ref, "c1"]);
      await onBoth(["containers", "create", "--runtime", "io.containerd.runc.v2", ref, "c2"]);

      const [lsB, lsC] = await onBoth(["containers", "ls"]);
      assert.equal(lsB, lsC, "ctr c ls reads the same");
      assert.match(
        lsB,
        new RegExp(`^c1\\s+${ref.replace(/[.]/g, "\\.")}\\s+io\\.containerd\\.runc\\.v2`, "m"),
      );

      const [infoB, infoC] = await onBoth(["containers", "info", "c1"]);
      assert.deepEqual(infoNoTimes(infoB), infoNoTimes(infoC), "ctr c info: same record");
      const info = JSON.parse(infoB) as Record<string, unknown>;
      assert.equal(info.SnapshotKey, "c1");
      assert.equal(info.Snapshotter, "overlayfs");
      const [specB, specC] = await onBoth(["containers", "info", "--spec", "c1"]);
      assert.equal(specB, specC, "the stored spec comes back byte for byte");

      await onBoth(["containers", "label", "c1", "shape=round", "color="]);
      const [labB, labC] = await onBoth(["containers", "info", "c1"]);
      assert.deepEqual(infoNoTimes(labB), infoNoTimes(labC));
      assert.deepEqual((JSON.parse(labB) as { Labels: unknown }).Labels, {
        "io.containerd.image.config.stop-signal": "SIGTERM",
        shape: "round",
      });

      for (const args of [
        ["containers", "ls", "-q"],
        ["containers", "ls", "-q", "id==c2"],
        ["containers", "ls", "-q", "labels.shape==round"],
        ["containers", "ls", "-q", "labels.shape"],
        ["containers", "ls", "-q", `image==${ref}`],
        ["containers", "ls", "-q", "runtime.name==io.containerd.runc.v2"],
        ["containers", "ls", "-q", "id~=^c", "labels.color"],
        ["containers", "ls", "-q", "snapshotter==overlayfs"],
      ]) {
        const [b, c] = await onBoth(args);
        assert.equal(b, c, `ctr ${args.join(" ")}`);
      }
      assert.equal((await onBoth(["containers", "ls", "-q", "labels.shape"]))[0], "c1\n");
      await bothFail(["containers", "ls", "id=="]);
      await bothFail(["containers", "create", ref, "c1"]);
      await bothFail(["containers", "info", "nope"]);

      const [snB, snC] = await onBoth(["snapshots", "ls"]);
      assert.equal(snB, snC, "ctr snapshots ls reads the same");
      assert.match(snB, /^c1\s+sha256:[0-9a-f]{64}\s+Active/m);

      // ctr c rm removes the snapshot too (client side), and says so for a missing id
      const [rmB, rmC] = await Promise.all(
        sides.map((s) => ctr(s.d.address, ["containers", "rm", "c1", "c2", "nope"])),
      );
      assert.equal(rmB!.code, rmC!.code);
      assert.equal(errText(rmB!), errText(rmC!));
      const [after1, after2] = await onBoth(["containers", "ls", "-q"]);
      assert.equal(after1, after2);
      assert.equal(after1, "");
      const [sn2B, sn2C] = await onBoth(["snapshots", "ls"]);
      assert.equal(sn2B, sn2C);
      assert.doesNotMatch(sn2B, /^c[12]\s/m);
    });
    assert.deepEqual(evB, evC, "the same container events, in order");
    assert.deepEqual(
      (evB as { topic: string }[]).map((e) => e.topic),
      [
        "/containers/create",
        "/containers/create",
        "/containers/update",
        "/containers/delete",
        "/containers/delete",
      ],
    );
  });

  it("a namespace holding a container cannot be removed", async () => {
    await onBoth(["images", "pull", "--plain-http", ref], "holdc");
    await onBoth(["containers", "create", ref, "h1"], "holdc");
    await onBoth(["images", "rm", "--sync", ref], "holdc");
    const msg = await bothFail(["namespaces", "rm", "holdc"]);
    assert.match(
      msg,
      /namespace "holdc" must be empty, but it still has containers, snapshots on "overlayfs"/,
    );
    await onBoth(["containers", "rm", "h1"], "holdc");
    await onBoth(["leases", "create", "--id", "trigger"], "holdc");
    await onBoth(["leases", "rm", "--sync", "trigger"], "holdc");
    await onBoth(["namespaces", "rm", "holdc"]);
  });

  it("a container's snapshot is a GC root: it outlives its image until the container goes", async () => {
    const ns = "gcroot";
    await onBoth(["images", "pull", "--plain-http", ref], ns);
    await onBoth(["containers", "create", ref, "g1"], ns);
    // the image goes and a collection runs: the container still holds its snapshot and the layer
    await onBoth(["images", "rm", "--sync", ref], ns);
    const [sB, sC] = await onBoth(["snapshots", "ls"], ns);
    assert.equal(sB, sC);
    const rows = sB.trim().split("\n").slice(1);
    assert.equal(rows.length, 2, `the active snapshot and its parent: ${sB}`);
    assert.match(sB, /^g1\s+sha256:[0-9a-f]{64}\s+Active/m);
    // delete the record only (no snapshot cleanup, as dockerd does), then force a collection
    for (const s of sides) await s.conn.client(Containers).delete({ id: "g1" }, { namespace: ns });
    await onBoth(["leases", "create", "--id", "trigger"], ns);
    await onBoth(["leases", "rm", "--sync", "trigger"], ns);
    const [eB, eC] = await onBoth(["snapshots", "ls"], ns);
    assert.equal(eB, eC);
    assert.equal(eB.trim().split("\n").length, 1, `only the header is left: ${eB}`);
    await onBoth(["namespaces", "rm", ns]);
  });

  it("dockerd's create (no image, no snapshot, JSON spec) and the API's errors match containerd", async () => {
    const ns = { namespace: "moby" };
    const specJson = Buffer.from(JSON.stringify({ ociVersion: "1.0.2-dev", root: { path: "/x/rootfs" } }));
    const docker = {
      id: "0123456789abcdef",
      labels: { "com.docker/engine.bundle.path": "/var/run/docker/containerd/0123456789abcdef" },
      runtime: {
        name: "io.containerd.runc.v2",
        options: { typeUrl: "containerd.runc.v1.Options", value: new Uint8Array() },
      },
      spec: { typeUrl: SPEC_URL, value: new Uint8Array(specJson) },
      createdAt: { seconds: -62135596800n, nanos: 0 },
      updatedAt: { seconds: -62135596800n, nanos: 0 },
    };
    const norm = (r: unknown) => normContainer((r as { container?: Container }).container);
    const normList = (r: unknown) =>
      (r as { containers: Container[] }).containers.map((c) => normContainer(c));
    type Call = (c: Client<typeof Containers>) => Promise<unknown>;
    const cases: [string, Call][] = [
      ["create as dockerd", (c) => outcome(c.create({ container: docker }, ns), norm)],
      ["get it back", (c) => outcome(c.get({ id: docker.id }, ns), norm)],
      ["create again", (c) => outcome(c.create({ container: docker }, ns))],
      ["create without a container", (c) => outcome(c.create({}, ns))],
      ["create with a bad id", (c) => outcome(c.create({ container: { ...docker, id: "a b" } }, ns))],
      ["create without runtime", (c) => outcome(c.create({ container: { id: "x", spec: docker.spec } }, ns))],
      [
        "create without spec",
        (c) => outcome(c.create({ container: { id: "x", runtime: { name: "r" } } }, ns)),
      ],
      [
        "create with a key but no snapshotter",
        (c) => outcome(c.create({ container: { ...docker, id: "x", snapshotKey: "k" } }, ns)),
      ],
      [
        "create with extensions",
        (c) =>
          outcome(
            c.create(
              {
                container: {
                  ...docker,
                  id: "ext",
                  labels: { a: "1", empty: "" },
                  extensions: { one: { typeUrl: "t", value: new Uint8Array([7]) } },
                },
              },
              ns,
            ),
            norm,
          ),
      ],
      [
        "update without id",
        (c) =>
          outcome(c.update({ container: { labels: { a: "b" } }, updateMask: { paths: ["labels"] } }, ns)),
      ],
      [
        "update a missing container",
        (c) => outcome(c.update({ container: { id: "missing" }, updateMask: { paths: ["labels"] } }, ns)),
      ],
      [
        "update in a namespace without containers",
        (c) =>
          outcome(
            c.update(
              { container: { id: "missing" }, updateMask: { paths: ["labels"] } },
              { namespace: "none" },
            ),
          ),
      ],
      [
        "update runtime",
        (c) => outcome(c.update({ container: { id: docker.id }, updateMask: { paths: ["runtime"] } }, ns)),
      ],
      [
        "update without mask, snapshotter changed",
        (c) => outcome(c.update({ container: { ...docker, snapshotter: "native" } }, ns)),
      ],
      [
        "update without mask, runtime changed",
        (c) => outcome(c.update({ container: { ...docker, runtime: { name: "other" } } }, ns)),
      ],
      [
        "update without mask",
        (c) => outcome(c.update({ container: { ...docker, image: "img", labels: { z: "1" } } }, ns), norm),
      ],
      [
        "update extensions.two (absent) and labels.a",
        (c) =>
          outcome(
            c.update(
              {
                container: { id: "ext", labels: { a: "2" } },
                updateMask: { paths: ["extensions.two", "labels.a"] },
              },
              ns,
            ),
            norm,
          ),
      ],
      [
        "update extensions (replace)",
        (c) =>
          outcome(
            c.update(
              {
                container: {
                  id: "ext",
                  extensions: { three: { typeUrl: "t3", value: new Uint8Array([3]) } },
                },
                updateMask: { paths: ["extensions"] },
              },
              ns,
            ),
            norm,
          ),
      ],
      ["get ext after updates", (c) => outcome(c.get({ id: "ext" }, ns), norm)],
      ["list", (c) => outcome(c.list({}, ns), normList)],
      ["list filtered", (c) => outcome(c.list({ filters: ["labels.a==2", "image==img"] }, ns), normList)],
      ["list bad filter", (c) => outcome(c.list({ filters: ["labels.a=="] }, ns))],
      ["get missing", (c) => outcome(c.get({ id: "missing" }, ns))],
      ["delete missing", (c) => outcome(c.delete({ id: "missing" }, ns))],
      [
        "delete in a namespace without containers",
        (c) => outcome(c.delete({ id: "x" }, { namespace: "none" })),
      ],
      ["delete", (c) => outcome(c.delete({ id: docker.id }, ns))],
      ["delete ext", (c) => outcome(c.delete({ id: "ext" }, ns))],
      ["list empty", (c) => outcome(c.list({}, ns), normList)],
    ];
    for (const [what, call] of cases) {
      const [b, c] = await Promise.all(sides.map((s) => call(s.conn.client(Containers))));
      assert.deepEqual(b, c, what);
    }
  });
});
