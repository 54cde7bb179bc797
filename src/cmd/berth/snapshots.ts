// `berth snapshots`: ctr's snapshot commands (list, prepare, view, mounts, commit, delete, info,
// usage, tree, label, diff), same flags and output, with the global --snapshotter.

import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { type Command, Option } from "commander";
import { GC_EXPIRE, GC_ROOT } from "../../core/gc/labels.js";
import { Content } from "../../gen/containerd/services/content/v1/content_pb.js";
import { Diff } from "../../gen/containerd/services/diff/v1/diff_pb.js";
import { Leases } from "../../gen/containerd/services/leases/v1/leases_pb.js";
import { type Info, Kind, Snapshots } from "../../gen/containerd/services/snapshots/v1/snapshots_pb.js";
import type { Mount } from "../../gen/containerd/types/mount_pb.js";
import type { CliContext, Wire } from "./context.js";
import { randomLeaseId } from "./lease-scope.js";
import { parseLabelArgs, rfc3339Nano, TabWriter } from "./table.js";

export const DEFAULT_SNAPSHOTTER = "overlayfs";
const LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip";

const KIND_NAMES: Record<number, string> = {
  [Kind.VIEW]: "View",
  [Kind.ACTIVE]: "Active",
  [Kind.COMMITTED]: "Committed",
};

export const kindName = (k: Kind): string => KIND_NAMES[k] ?? "Unknown";

/** Go's time.RFC3339 of a UTC time: seconds precision, "Z". */
export function rfc3339Utc(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** ctr's size format (go-units CustomSize "%02.1f %s", binary units): "0.0 B", "4.0 KiB". */
export function humanBytes(n: number | bigint): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];
  let size = Number(n);
  let i = 0;
  while (size >= 1024 && i < units.length - 1) {
    size /= 1024;
    i++;
  }
  return `${size.toFixed(1).padStart(2, "0")} ${units[i]}`;
}

/** One `mount -t TYPE SOURCE TARGET -o OPTS` line per mount, as ctr prints them. */
export function formatMounts(
  target: string,
  mounts: readonly Pick<Mount, "type" | "source" | "options">[],
): string {
  return mounts.map((m) => `mount -t ${m.type} ${m.source} ${target} -o ${m.options.join(",")}\n`).join("");
}

/** A snapshot Info as ctr prints it (Go's JSON of snapshots.Info, 4-space indent). */
export function infoJson(info: Info): string {
  const o: Record<string, unknown> = { Kind: kindName(info.kind), Name: info.name };
  if (info.parent) o["Parent"] = info.parent;
  const keys = Object.keys(info.labels).sort();
  if (keys.length > 0) o["Labels"] = Object.fromEntries(keys.map((k) => [k, info.labels[k]]));
  o["Created"] = rfc3339Nano(info.createdAt ?? { seconds: 0n, nanos: 0 });
  o["Updated"] = rfc3339Nano(info.updatedAt ?? { seconds: 0n, nanos: 0 });
  return JSON.stringify(o, null, 4);
}

function mountsJson(mounts: readonly Mount[]): string {
  return JSON.stringify(
    mounts.map((m) => ({ Type: m.type, Source: m.source, Options: m.options })),
    null,
    4,
  );
}

/** ctr's `snapshots tree`: roots first, children indented under their parent with "\_". */
export function formatTree(infos: readonly Pick<Info, "name" | "parent">[]): string {
  const nodes: { name: string; parent: string; children: string[] }[] = [];
  const index = new Map<string, (typeof nodes)[number]>();
  const add = (name: string, parent: string): (typeof nodes)[number] => {
    let node = index.get(name);
    if (!node) {
      node = { name, parent, children: [] };
      nodes.push(node);
      index.set(name, node);
    } else {
      node.parent = parent;
    }
    if (parent !== "") {
      const p = index.get(parent) ?? add(parent, "");
      p.children.push(name);
    }
    return node;
  };
  for (const i of infos) add(i.name, i.parent);
  let out = "";
  const print = (name: string, level: number) => {
    const node = index.get(name)!;
    out += `${"  ".repeat(level)}${level > 0 ? "\\_" : ""} ${node.name}\n`;
    for (const c of node.children) print(c, level + 1);
  };
  for (const n of nodes) if (n.parent === "") print(n.name, 0);
  return out;
}

async function writeOut(data: Uint8Array): Promise<void> {
  if (data.length > 0 && !process.stdout.write(data)) await once(process.stdout, "drain");
}

async function listAll(ctx: CliContext, snapshotter: string): Promise<Info[]> {
  const client = await ctx.client(Snapshots);
  const out: Info[] = [];
  for await (const r of client.list({ snapshotter, filters: [] }, ctx.call())) out.push(...r.info);
  return out;
}

export function registerSnapshots(program: Command, wire: Wire): void {
  const env = process.env;
  const snapshots = program
    .command("snapshots")
    .aliases(["snapshot", "snap"])
    .description("manage snapshots")
    .addOption(
      new Option(
        "--snapshotter <name>",
        "snapshotter name. Empty value stands for the default value. [$BERTH_SNAPSHOTTER, $CONTAINERD_SNAPSHOTTER]",
      ).default(env.BERTH_SNAPSHOTTER || env.CONTAINERD_SNAPSHOTTER || ""),
    );

  const snapshotterOf = (cmd: Command): string =>
    cmd.optsWithGlobals<{ snapshotter?: string }>().snapshotter || DEFAULT_SNAPSHOTTER;

  snapshots
    .command("commit")
    .description("commit an active snapshot into the provided name")
    .argument("<key>", "name of the committed snapshot")
    .argument("<active>", "key of the active snapshot")
    .action(
      wire(async (ctx, cmd) => {
        const [name, key] = cmd.args as [string, string];
        const client = await ctx.client(Snapshots);
        await client.commit(
          { snapshotter: snapshotterOf(cmd), name, key, labels: { [GC_ROOT]: rfc3339Utc(new Date()) } },
          ctx.call(),
        );
      }),
    );

  snapshots
    .command("diff")
    .description("get the diff of two snapshots. the default second snapshot is the first snapshot's parent.")
    .argument("<idA>", "snapshot to diff")
    .argument("[idB]", "snapshot to diff against (default: the parent of idA)")
    .option("--media-type <type>", "media type to use for creating diff", LAYER_GZIP)
    .option("--ref <ref>", "content upload reference to use")
    .option("--keep", "keep diff content. up to creator to delete it.")
    .option(
      "--label <label>",
      "labels to attach to the image",
      (v: string, prev: string[]) => [...prev, v],
      [] as string[],
    )
    .action(
      wire(async (ctx, cmd) => {
        const [idA, idB] = cmd.args as [string, string | undefined];
        const opts = cmd.opts<{ mediaType: string; ref?: string; keep?: boolean; label: string[] }>();
        const snapshotter = snapshotterOf(cmd);
        const labels = parseLabelArgs(opts.label);
        if (opts.keep) labels[GC_ROOT] = rfc3339Utc(new Date());
        const leases = await ctx.client(Leases);
        const sn = await ctx.client(Snapshots);
        const { lease } = await leases.create(
          {
            id: randomLeaseId(),
            labels: { [GC_EXPIRE]: rfc3339Utc(new Date(Date.now() + 24 * 3600_000)) },
          },
          ctx.call(),
        );
        const leaseId = lease?.id ?? "";
        const call = ctx.call({ lease: leaseId });
        const views: string[] = [];
        const unique = () =>
          `${process.hrtime.bigint() % 1_000_000_000n}-${randomBytes(3).toString("base64url")}`;
        const view = async (key: string, parent: string): Promise<Mount[]> => {
          const { mounts } = await sn.view({ snapshotter, key, parent }, call);
          views.push(key);
          return mounts;
        };
        /** Mounts of a snapshot as it is: an active one's own, a view of anything else. */
        const mountsOf = async (id: string): Promise<Mount[]> => {
          const { info } = await sn.stat({ snapshotter, key: id }, call);
          if (info?.kind === Kind.ACTIVE) return (await sn.mounts({ snapshotter, key: id }, call)).mounts;
          return view(`${id}-view-${unique()}`, id);
        };
        try {
          let left: Mount[];
          let right: Mount[];
          if (idB === undefined) {
            const { info } = await sn.stat({ snapshotter, key: idA }, call);
            const parent = info?.parent ?? "";
            left = await view(`${parent}-parent-view-${unique()}`, parent);
            right =
              info?.kind === Kind.ACTIVE
                ? (await sn.mounts({ snapshotter, key: idA }, call)).mounts
                : await view(`${idA}-view-${unique()}`, idA);
          } else {
            left = await mountsOf(idA);
            right = await mountsOf(idB);
          }
          const differ = await ctx.client(Diff);
          const { diff } = await differ.diff(
            { left, right, mediaType: opts.mediaType, ref: opts.ref ?? "", labels },
            call,
          );
          if (!diff) throw new Error("diff service returned no descriptor");
          const content = await ctx.client(Content);
          for await (const chunk of content.read({ digest: diff.digest }, ctx.stream({ lease: leaseId })))
            await writeOut(chunk.data);
        } finally {
          for (const key of views.reverse())
            await sn.remove({ snapshotter, key }, ctx.call()).catch(() => {});
          await leases.delete({ id: leaseId, sync: false }, ctx.call()).catch(() => {});
        }
      }),
    );

  snapshots
    .command("info")
    .description("get info about a snapshot")
    .argument("<key>", "snapshot key or name")
    .action(
      wire(async (ctx, cmd) => {
        const [key] = cmd.args as [string];
        const client = await ctx.client(Snapshots);
        const { info } = await client.stat({ snapshotter: snapshotterOf(cmd), key }, ctx.call());
        if (info) process.stdout.write(`${infoJson(info)}\n`);
      }),
    );

  snapshots
    .command("list")
    .alias("ls")
    .description("list snapshots")
    .action(
      wire(async (ctx, cmd) => {
        const infos = await listAll(ctx, snapshotterOf(cmd));
        const tw = new TabWriter().row("KEY", "PARENT", "KIND", "");
        for (const i of infos) tw.row(i.name, i.parent, kindName(i.kind), "");
        tw.flush();
      }),
    );

  snapshots
    .command("mounts")
    .aliases(["m", "mount"])
    .description("mount gets mount commands for the snapshots")
    .argument("<target>", "mount target path")
    .argument("<key>", "snapshot key")
    .action(
      wire(async (ctx, cmd) => {
        const [target, key] = cmd.args as [string, string];
        const client = await ctx.client(Snapshots);
        const { mounts } = await client.mounts({ snapshotter: snapshotterOf(cmd), key }, ctx.call());
        process.stdout.write(formatMounts(target, mounts));
      }),
    );

  const create = (name: "prepare" | "view", description: string) =>
    snapshots
      .command(name)
      .description(description)
      .argument("<key>", "key of the new snapshot")
      .argument("[parent]", "committed snapshot to start from")
      .option("-t, --target <path>", "mount target path, will print mount, if provided")
      .option("--mounts", "Print out snapshot mounts as JSON")
      .action(
        wire(async (ctx, cmd) => {
          const [key, parent] = cmd.args as [string, string | undefined];
          const opts = cmd.opts<{ target?: string; mounts?: boolean }>();
          const client = await ctx.client(Snapshots);
          const req = { snapshotter: snapshotterOf(cmd), key, parent: parent ?? "" };
          const { mounts } =
            name === "prepare"
              ? await client.prepare({ ...req, labels: { [GC_ROOT]: rfc3339Utc(new Date()) } }, ctx.call())
              : await client.view(req, ctx.call());
          if (opts.target) process.stdout.write(formatMounts(opts.target, mounts));
          if (opts.mounts) process.stdout.write(`${mountsJson(mounts)}\n`);
        }),
      );
  create("prepare", "prepare a snapshot from a committed snapshot");

  snapshots
    .command("delete")
    .aliases(["del", "remove", "rm"])
    .description("remove snapshots")
    .argument("<key...>", "snapshots to remove")
    .action(
      wire(async (ctx, cmd) => {
        const client = await ctx.client(Snapshots);
        const snapshotter = snapshotterOf(cmd);
        for (const key of cmd.args) {
          try {
            await client.remove({ snapshotter, key }, ctx.call());
          } catch (err) {
            (err as Error).message = `failed to remove ${JSON.stringify(key)}: ${(err as Error).message}`;
            throw err;
          }
        }
      }),
    );

  snapshots
    .command("label")
    .description("add labels to content")
    .argument("<name>", "snapshot key or name")
    .argument("[labels...]", "labels as LABEL=VALUE (an empty value removes the label)")
    .action(
      wire(async (ctx, cmd) => {
        const [name, ...args] = cmd.args as [string, ...string[]];
        const labels = parseLabelArgs(args);
        const snapshotter = snapshotterOf(cmd);
        const client = await ctx.client(Snapshots);
        const set: Record<string, string> = {};
        const paths: string[] = [];
        for (const [k, v] of Object.entries(labels)) {
          paths.push(`labels.${k}`);
          if (v !== "") set[k] = v;
        }
        const info =
          paths.length === 0
            ? (await client.stat({ snapshotter, key: name }, ctx.call())).info
            : (
                await client.update(
                  { snapshotter, info: { name, labels: set }, updateMask: { paths } },
                  ctx.call(),
                )
              ).info;
        const out = Object.entries(info?.labels ?? {}).map(([k, v]) => `${k}=${v}`);
        process.stdout.write(`${out.join(",")}\n`);
      }),
    );

  snapshots
    .command("tree")
    .description("display tree view of snapshot branches")
    .action(
      wire(async (ctx, cmd) => {
        process.stdout.write(formatTree(await listAll(ctx, snapshotterOf(cmd))));
      }),
    );

  snapshots
    .command("usage")
    .description("usage snapshots")
    .argument("[key...]", "snapshots to report (default: all)")
    .option("-b, --b", "display size in bytes")
    .action(
      wire(async (ctx, cmd) => {
        const { b } = cmd.opts<{ b?: boolean }>();
        const show = (n: bigint) => (b ? n.toString() : humanBytes(n));
        const snapshotter = snapshotterOf(cmd);
        const client = await ctx.client(Snapshots);
        const keys = cmd.args.length > 0 ? cmd.args : (await listAll(ctx, snapshotter)).map((i) => i.name);
        const tw = new TabWriter().row("KEY", "SIZE", "INODES", "");
        for (const key of keys) {
          const u = await client.usage({ snapshotter, key }, ctx.call());
          tw.row(key, show(u.size), u.inodes.toString(), "");
        }
        tw.flush();
      }),
    );

  create("view", "create a read-only snapshot from a committed snapshot");
}
