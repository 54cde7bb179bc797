// `berth namespaces`: create, list, remove and label namespaces.
import { toJson } from "@bufbuild/protobuf";
import type { Command } from "commander";
import { isNotFound } from "../../base/errdefs.js";
import { NamespaceSchema, Namespaces } from "../../gen/containerd/services/namespaces/v1/namespace_pb.js";
import type { Wire } from "./context.js";
import { formatLabels, parseLabelArgs, printJson, TabWriter, wantsJson } from "./table.js";

export function registerNamespaces(program: Command, wire: Wire): void {
  const ns = program.command("namespaces").aliases(["namespace", "ns"]).description("manage namespaces");

  ns.command("create")
    .alias("c")
    .description("create a new namespace; it must be unique")
    .argument("<name>", "namespace name")
    .argument("[labels...]", "labels as KEY=VALUE")
    .action(
      wire(async (ctx, cmd) => {
        const [name, ...labels] = cmd.args as [string, ...string[]];
        const client = await ctx.client(Namespaces);
        await client.create({ namespace: { name, labels: parseLabelArgs(labels) } }, ctx.call());
      }),
    );

  ns.command("list")
    .alias("ls")
    .description("list namespaces")
    .option("-q, --quiet", "print only the namespace name")
    .option("--format <format>", "output format: table or json", "table")
    .action(
      wire(async (ctx, cmd) => {
        const opts = cmd.opts<{ quiet?: boolean; format?: string }>();
        const json = wantsJson(opts.format);
        const client = await ctx.client(Namespaces);
        const { namespaces } = await client.list({}, ctx.call());
        if (json) {
          printJson(namespaces.map((n) => toJson(NamespaceSchema, n)));
          return;
        }
        if (opts.quiet) {
          for (const n of namespaces) process.stdout.write(`${n.name}\n`);
          return;
        }
        const tw = new TabWriter().row("NAME", "LABELS", "");
        for (const n of namespaces) tw.row(n.name, formatLabels(n.labels), "");
        tw.flush();
      }),
    );

  ns.command("remove")
    .alias("rm")
    .description("remove one or more namespaces; for now, a namespace must be empty")
    .argument("<name...>", "namespaces to remove")
    .action(
      wire(async (ctx, cmd) => {
        const client = await ctx.client(Namespaces);
        for (const name of cmd.args) {
          try {
            await client.delete({ name }, ctx.call());
          } catch (err) {
            // Removing what is already gone counts as done, as with ctr.
            if (!isNotFound(err)) {
              ctx.fail(`unable to delete ${name}: ${(err as Error).message}`);
              continue;
            }
          }
          process.stdout.write(`${name}\n`);
        }
      }),
    );

  ns.command("label")
    .description("set and clear labels for a namespace; an empty value clears the label")
    .argument("<name>", "namespace name")
    .argument("[labels...]", "labels as KEY=VALUE (KEY= clears)")
    .action(
      wire(async (ctx, cmd) => {
        const [name, ...args] = cmd.args as [string, ...string[]];
        const labels = parseLabelArgs(args);
        const paths = Object.keys(labels).map((k) => `labels.${k}`);
        if (paths.length === 0) return;
        const client = await ctx.client(Namespaces);
        await client.update({ namespace: { name, labels }, updateMask: { paths } }, ctx.call());
      }),
    );
}
