// `berth config reload`: ask berthd to re-read config.toml and its imports (as SIGHUP does) and
// print what changed: each key, whether it was applied or waits for a restart, old and new value
// (credentials come back masked from the daemon).
import type { Command } from "commander";
import { Apply, Config } from "../../gen/berth/config/v1/config_pb.js";
import type { Wire } from "./context.js";
import { alignColumns, printJson, SPACES, wantsJson } from "./table.js";

const applyName = (a: Apply) => (a === Apply.LIVE ? "applied" : a === Apply.NEEDS_RESTART ? "restart" : "?");

export function registerConfig(program: Command, wire: Wire): void {
  const config = program.command("config").description("berthd's configuration");
  config
    .command("reload")
    .description("re-read berthd's config file and imports; apply what can change without a restart")
    .option("--format <format>", "output format: table or json", "table")
    .action(
      wire(async (ctx, cmd) => {
        const json = wantsJson(cmd.opts<{ format?: string }>().format);
        const res = await (await ctx.client(Config)).reload({}, ctx.call());
        if (json) {
          printJson({
            changes: res.changes.map((c) => ({
              key: c.key,
              apply: applyName(c.apply),
              old: c.oldValue,
              new: c.newValue,
            })),
            files: res.files,
            warnings: res.warnings,
          });
          return;
        }
        for (const w of res.warnings) process.stderr.write(`warning: ${w}\n`);
        if (res.changes.length === 0) {
          process.stdout.write("no changes\n");
          return;
        }
        let out = "KEY\tAPPLY\tOLD\tNEW\n";
        for (const c of res.changes)
          out += `${c.key}\t${applyName(c.apply)}\t${c.oldValue || "-"}\t${c.newValue || "-"}\n`;
        process.stdout.write(alignColumns(out, SPACES));
        const restart = res.changes.filter((c) => c.apply === Apply.NEEDS_RESTART);
        if (restart.length > 0)
          process.stderr.write(`${restart.length} change(s) take effect when berthd restarts\n`);
      }),
    );
}
