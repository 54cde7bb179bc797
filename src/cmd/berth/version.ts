// `berth version`: client and server versions, laid out like ctr's.
import type { Command } from "commander";
import { Introspection } from "../../gen/containerd/services/introspection/v1/introspection_pb.js";
import { Version } from "../../gen/containerd/services/version/v1/version_pb.js";
import { REVISION, VERSION } from "../../version.js";
import type { Wire } from "./context.js";
import { printJson, wantsJson } from "./table.js";

export interface BerthVersion {
  version: string;
  revision: string;
}

/** The client's version: the same build constants berthd reports. */
export function berthVersion(): BerthVersion {
  return { version: VERSION, revision: REVISION };
}

export function registerVersion(program: Command, wire: Wire): void {
  program
    .command("version")
    .description("print the client and server versions")
    .option("--format <format>", "output format: table or json", "table")
    .action(
      wire(async (ctx, cmd) => {
        const json = wantsJson(cmd.opts<{ format?: string }>().format);
        const client = berthVersion();
        const out = process.stdout;
        if (!json) {
          out.write("Client:\n");
          out.write(`  Version:  ${client.version}\n`);
          out.write(`  Revision: ${client.revision}\n`);
          out.write(`  Node version: ${process.version}\n`);
          out.write("\n");
        }
        const server = await (await ctx.client(Version)).version({}, ctx.call());
        let uuid: string | undefined;
        try {
          uuid = (await (await ctx.client(Introspection)).server({}, ctx.call())).uuid;
        } catch (err) {
          ctx.debug(`introspection server: ${(err as Error).message}`);
        }
        if (json) {
          printJson({
            client: { ...client, node: process.version },
            server: { version: server.version, revision: server.revision, uuid: uuid ?? "" },
          });
          return;
        }
        out.write("Server:\n");
        out.write(`  Version:  ${server.version}\n`);
        out.write(`  Revision: ${server.revision}\n`);
        if (uuid !== undefined) out.write(`  UUID: ${uuid}\n`);
        if (server.version !== client.version) process.stderr.write("WARNING: version mismatch\n");
        if (server.revision !== client.revision) process.stderr.write("WARNING: revision mismatch\n");
      }),
    );
}
