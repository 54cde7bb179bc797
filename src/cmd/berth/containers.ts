// `berth containers` (alias container, c): create, list, info, delete and label containers.
// Output follows ctr's.
import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import { isNotFound } from "../../base/errdefs.js";
import { SPEC_TYPE_URL } from "../../core/oci/index.js";
import { type Container, Containers } from "../../gen/containerd/services/containers/v1/containers_pb.js";
import { Snapshots } from "../../gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { Tasks } from "../../gen/containerd/services/tasks/v1/tasks_pb.js";
import { createContainer } from "./container-create.js";
import { addContainerFlags, readContainerFlags } from "./container-flags.js";
import type { CliContext, Wire } from "./context.js";
import { parseLabelArgs, printJson, rfc3339Nano, TabWriter, WIDE } from "./table.js";

const aliases = (cmd: Command, ...names: string[]) => {
  for (const n of names) cmd.alias(n);
  return cmd;
};

/** The container's spec decoded (JSON), or undefined. */
export function containerSpec(c: Container): Record<string, unknown> | undefined {
  if (!c.spec || c.spec.value.length === 0) return undefined;
  try {
    return JSON.parse(Buffer.from(c.spec.value).toString("utf8")) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

function containerInfo(c: Container): unknown {
  const ts = (t: Container["createdAt"]) => (t ? rfc3339Nano(t) : "0001-01-01T00:00:00Z");
  let runtimeOptions: unknown = null;
  const o = c.runtime?.options;
  // ctr prints the Any as its JSON form: type_url, and value (base64) unless empty
  if (o)
    runtimeOptions =
      o.value.length > 0
        ? { type_url: o.typeUrl, value: Buffer.from(o.value).toString("base64") }
        : { type_url: o.typeUrl };
  return {
    ID: c.id,
    Labels: Object.keys(c.labels).length > 0 ? c.labels : null,
    Image: c.image,
    Runtime: { Name: c.runtime?.name ?? "", Options: runtimeOptions },
    SnapshotKey: c.snapshotKey,
    Snapshotter: c.snapshotter,
    CreatedAt: ts(c.createdAt),
    UpdatedAt: ts(c.updatedAt),
    Extensions: Object.keys(c.extensions).length > 0 ? Object.keys(c.extensions) : null,
    Spec: containerSpec(c) ?? (c.spec ? { type_url: c.spec.typeUrl ?? SPEC_TYPE_URL } : null),
  };
}

/** Deletes a container (refused while it has a task) and, unless kept, its snapshot. */
export async function deleteContainer(ctx: CliContext, id: string, keepSnapshot = false): Promise<void> {
  const containers = await ctx.client(Containers);
  const { container } = await containers.get({ id }, ctx.call());
  const tasks = await ctx.client(Tasks);
  const hasTask = await tasks.get({ containerId: id }, ctx.call()).then(
    () => true,
    (err: unknown) => {
      if (isNotFound(err)) return false;
      throw err;
    },
  );
  if (hasTask) throw new Error(`cannot delete a container with a task: ${id}: failed precondition`);
  await containers.delete({ id }, ctx.call());
  if (!keepSnapshot && container?.snapshotter && container.snapshotKey) {
    const snaps = await ctx.client(Snapshots);
    await snaps
      .remove({ snapshotter: container.snapshotter, key: container.snapshotKey }, ctx.call())
      .catch((err: unknown) => {
        if (!isNotFound(err)) throw err;
      });
  }
}

export function registerContainers(program: Command, wire: Wire): void {
  const containers = aliases(
    program.command("containers").description("manage containers"),
    "container",
    "c",
  );

  addContainerFlags(
    containers
      .command("create")
      .description("create container")
      .argument("<image>", "image reference")
      .argument("<id>", "container id")
      .argument("[command...]", "command and arguments"),
  )
    .allowUnknownOption()
    .action(
      wire(async (ctx, cmd) => {
        const [ref, id, args] = cmd.processedArgs as [string, string, string[]];
        const o = cmd.opts();
        await createContainer(ctx, ref, id, args ?? [], readContainerFlags(o));
      }),
    );

  aliases(containers.command("list"), "ls")
    .description("list containers")
    .argument("[filters...]", "filters")
    .option("-q, --quiet", "print only the container id")
    .action(
      wire(async (ctx, cmd) => {
        const [filters] = cmd.processedArgs as [string[]];
        const quiet = cmd.opts().quiet === true;
        const client = await ctx.client(Containers);
        const { containers: list } = await client.list({ filters: filters ?? [] }, ctx.call());
        if (quiet) {
          for (const c of list) process.stdout.write(`${c.id}\n`);
          return;
        }
        const tw = new TabWriter(WIDE);
        tw.row("CONTAINER", "IMAGE", "RUNTIME", "");
        for (const c of list) tw.row(c.id, c.image || "-", c.runtime?.name ?? "", "");
        tw.flush();
      }),
    );

  containers
    .command("info")
    .description("get info about a container")
    .argument("<id>", "container id")
    .option("--spec", "only display the spec")
    .action(
      wire(async (ctx, cmd) => {
        const [id] = cmd.processedArgs as [string];
        const client = await ctx.client(Containers);
        const { container } = await client.get({ id }, ctx.call());
        if (!container) throw new Error(`container "${id}": not found`);
        printJson(cmd.opts().spec ? (containerSpec(container) ?? null) : containerInfo(container));
      }),
    );

  aliases(containers.command("delete"), "del", "remove", "rm")
    .description("delete one or more existing containers")
    .argument("<ids...>", "container ids")
    .option("--keep-snapshot", "do not clean up snapshot with container")
    .action(
      wire(async (ctx, cmd) => {
        const [ids] = cmd.processedArgs as [string[]];
        const keep = cmd.opts().keepSnapshot === true;
        for (const id of ids) {
          try {
            await deleteContainer(ctx, id, keep);
          } catch (err) {
            if (ids.length === 1) throw err;
            ctx.fail(`failed to delete container "${id}": ${(err as Error).message}`);
          }
        }
      }),
    );

  containers
    .command("label")
    .description("set and clear labels for a container")
    .argument("<id>", "container id")
    .argument("[labels...]", "key=value (an empty value clears the label)")
    .action(
      wire(async (ctx, cmd) => {
        const [id, args] = cmd.processedArgs as [string, string[]];
        const labels = parseLabelArgs(args ?? []);
        const client = await ctx.client(Containers);
        const paths = Object.keys(labels).map((k) => `labels.${k}`);
        const set: Record<string, string> = {};
        for (const [k, v] of Object.entries(labels)) if (v !== "") set[k] = v;
        let c: Container | undefined;
        if (paths.length > 0) {
          ({ container: c } = await client.update(
            { container: { id, labels: set }, updateMask: create(FieldMaskSchema, { paths }) },
            ctx.call(),
          ));
        } else ({ container: c } = await client.get({ id }, ctx.call()));
        const out = Object.entries(c?.labels ?? {}).map(([k, v]) => `${k}=${v}`);
        process.stdout.write(`${out.join(",")}\n`);
      }),
    );
}
