// `berth content prune references` (ctr's) and `berth gc`: both end with a lease deleted with
// sync=true, which is how a containerd client asks the daemon for a collection and waits for it.

import type { Command } from "commander";
import { randomLeaseId } from "../../core/leases/store.js";
import { Content } from "../../gen/containerd/services/content/v1/content_pb.js";
import { Leases } from "../../gen/containerd/services/leases/v1/leases_pb.js";
import type { CliContext, Wire } from "./context.js";

const LAYER_PREFIX = "containerd.io/gc.ref.content.l.";
const CONTENT_PREFIX = "containerd.io/gc.ref.content.";

/** Labels ctr's prune removes: layer references (`.l.<n>`, or a numbered ref other than 0). */
export function isLayerLabel(key: string): boolean {
  if (key.startsWith(LAYER_PREFIX)) return true;
  if (!key.startsWith(CONTENT_PREFIX)) return false;
  const rest = key.slice(CONTENT_PREFIX.length);
  return /^\d+$/.test(rest) && rest !== "0";
}

async function collect(ctx: CliContext, sync: boolean): Promise<void> {
  const leases = await ctx.client(Leases);
  const id = randomLeaseId();
  const expire = new Date(Date.now() + 3600_000).toISOString().replace(/\.\d{3}Z$/, "Z");
  await leases.create({ id, labels: { "containerd.io/gc.expire": expire } }, ctx.call());
  await leases.delete({ id, sync }, ctx.call());
}

export function registerGc(program: Command, wire: Wire): void {
  const content = program.commands.find((c) => c.name() === "content");
  if (!content) throw new Error("register content before gc");
  content
    .command("prune")
    .description("prunes content from the content store")
    .command("references")
    .description("prunes preference labels from the content store (layers only by default)")
    .option("--async", "allow garbage collection to cleanup asynchronously")
    .option("--dry", "just show updates without applying")
    .action(
      wire(async (ctx, cmd) => {
        const opts = cmd.opts<{ async?: boolean; dry?: boolean }>();
        const client = await ctx.client(Content);
        for await (const batch of client.list({ filters: [] }, ctx.call())) {
          for (const info of batch.info) {
            const keys = Object.keys(info.labels).filter(isLayerLabel);
            if (keys.length === 0) continue;
            if (opts.dry) {
              for (const k of keys) process.stderr.write(`would remove label ${k} from ${info.digest}\n`);
              continue;
            }
            const labels = { ...info.labels };
            for (const k of keys) delete labels[k];
            await client.update(
              { info: { ...info, labels }, updateMask: { paths: keys.map((k) => `labels.${k}`) } },
              ctx.call(),
            );
          }
        }
        if (!opts.dry) await collect(ctx, !opts.async);
      }),
    );

  program
    .command("gc")
    .description("run a garbage collection now and wait for it (a sync lease delete)")
    .option("--async", "only schedule it")
    .action(
      wire(async (ctx, cmd) => {
        await collect(ctx, !cmd.opts<{ async?: boolean }>().async);
      }),
    );
}
