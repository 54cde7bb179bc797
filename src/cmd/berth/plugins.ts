// `berth plugins ls`: the daemon's plugins and their init status, as Introspection reports them.
import { toJson } from "@bufbuild/protobuf";
import type { Command } from "commander";
import { GRPC_CODE_NAMES } from "../../base/errdefs.js";
import { formatPlatform } from "../../base/platforms.js";
import {
  Introspection,
  type Plugin,
  PluginSchema,
} from "../../gen/containerd/services/introspection/v1/introspection_pb.js";
import type { Platform } from "../../gen/containerd/types/platform_pb.js";
import type { Wire } from "./context.js";
import { printJson, TabWriter, WIDE, wantsJson } from "./table.js";

/** The marker a plugin's init error carries when the plugin skipped itself. */
const SKIP_MARKER = "skip plugin";

export function grpcCodeName(code: number): string {
  return GRPC_CODE_NAMES[code] ?? `Code(${code})`;
}

/** ok, skip or error: no init error is ok; an error that says the plugin skipped itself is skip. */
export function pluginStatus(p: Pick<Plugin, "initErr">): "ok" | "skip" | "error" {
  if (!p.initErr) return "ok";
  return p.initErr.message.includes(SKIP_MARKER) ? "skip" : "error";
}

/** Platforms as sorted `os/arch[/variant]`, comma separated. */
export function prettyPlatforms(ps: readonly Platform[]): string {
  return ps.map(formatPlatform).sort().join(",");
}

/** The `-d` layout: one block of `Key: value` rows per plugin. */
export function formatPluginsDetailed(plugins: readonly Plugin[]): string {
  const tw = new TabWriter(WIDE);
  plugins.forEach((p, i) => {
    // An empty row of three columns separates plugins (it takes the width of those above it).
    if (i > 0) tw.write("\t\t\t\n");
    tw.write(`Type:\t ${p.type}\n`);
    tw.write(`ID:\t ${p.id}\n`);
    if (p.requires.length > 0) {
      tw.write("Requires:\t\n");
      for (const r of p.requires) tw.write(`\t ${r}\n`);
    }
    if (p.platforms.length > 0) tw.write(`Platforms:\t ${prettyPlatforms(p.platforms)}\n`);
    const exports = Object.keys(p.exports).sort();
    if (exports.length > 0) {
      tw.write("Exports:\t\n");
      for (const k of exports) tw.write(`\t ${k} \t ${p.exports[k]}\n`);
    }
    if (p.capabilities.length > 0) tw.write(`Capabilities:\t ${p.capabilities.join(",")}\n`);
    if (p.initErr) {
      tw.write("Error:\t\n");
      tw.write(`\t Code:\t ${grpcCodeName(p.initErr.code)}\n`);
      tw.write(`\t Message:\t ${p.initErr.message}\n`);
    }
  });
  return tw.toString();
}

export function registerPlugins(program: Command, wire: Wire): void {
  const plugins = program
    .command("plugins")
    .alias("plugin")
    .description("provides information about the daemon's plugins");

  plugins
    .command("list")
    .alias("ls")
    .description("lists the daemon's plugins")
    .argument("[filters...]", "filters, e.g. type==io.containerd.snapshotter.v1")
    .option("-q, --quiet", "print only the plugin ids")
    .option("-d, --detailed", "print detailed information about each plugin")
    .option("--format <format>", "output format: table or json", "table")
    .action(
      wire(async (ctx, cmd) => {
        const opts = cmd.opts<{ quiet?: boolean; detailed?: boolean; format?: string }>();
        const json = wantsJson(opts.format);
        const client = await ctx.client(Introspection);
        const { plugins } = await client.plugins({ filters: cmd.args }, ctx.call());
        if (json) {
          printJson(
            plugins.map((p) => ({ ...(toJson(PluginSchema, p) as object), status: pluginStatus(p) })),
          );
          return;
        }
        if (opts.quiet) {
          for (const p of plugins) process.stdout.write(`${p.id}\n`);
          return;
        }
        if (opts.detailed) {
          process.stdout.write(formatPluginsDetailed(plugins));
          return;
        }
        const tw = new TabWriter(WIDE).row("TYPE", "ID", "PLATFORMS", "STATUS", "");
        for (const p of plugins) {
          tw.row(p.type, p.id, prettyPlatforms(p.platforms) || "-", pluginStatus(p), "");
        }
        tw.flush();
      }),
    );
}
