// `berth content prune references` (ctr's) and `berth gc`: both end with a lease deleted with
// sync=true, which is how a containerd client asks the daemon for a collection and waits for it.
// `berth gc why`, `berth gc prune` and `berth check` call berth's own GC service (berth.gc.v1),
// so they work against a remote socket too.

import type { Command } from "commander";
import { GC_EXPIRE } from "../../core/gc/labels.js";
import { formatChain } from "../../core/gc/why-format.js";
import { GC } from "../../gen/berth/gc/v1/gc_pb.js";
import { Content } from "../../gen/containerd/services/content/v1/content_pb.js";
import { Leases } from "../../gen/containerd/services/leases/v1/leases_pb.js";
import type { CliContext, Wire } from "./context.js";
import { randomLeaseId } from "./lease-scope.js";

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
  await leases.create({ id, labels: { [GC_EXPIRE]: expire } }, ctx.call());
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

  const gc = program
    .command("gc")
    .description("run a garbage collection now and wait for it (a sync lease delete)")
    .option("--async", "only schedule it")
    .action(
      wire(async (ctx, cmd) => {
        await collect(ctx, !cmd.opts<{ async?: boolean }>().async);
      }),
    );

  gc.command("why")
    .description("show the chains of references that keep an object, or say it is collectable")
    .argument("<object>", "content digest, snapshot key, image name, lease id or container id")
    .option("--type <type>", "content, snapshot, image, lease or container (default: guessed)")
    .option("--snapshotter <name>", "snapshotter of a snapshot key (default: whichever holds it)")
    .action(
      wire(async (ctx, cmd) => {
        const opts = cmd.opts<{ type?: string; snapshotter?: string }>();
        const client = await ctx.client(GC);
        const r = await client.why(
          { object: cmd.args[0]!, type: opts.type ?? "", snapshotter: opts.snapshotter ?? "" },
          ctx.call(),
        );
        const name = r.kind === "snapshot" ? `${r.snapshotter}/${r.name}` : r.name;
        if (r.collectable) process.stdout.write(`${r.kind} ${name} is collectable\n`);
        else
          process.stdout.write(
            `${r.kind} ${name} is kept by ${r.chains.length === 1 ? "1 chain" : `${r.chains.length} chains`}:\n`,
          );
        for (const c of r.chains) process.stdout.write(`  ${formatChain(c)}\n`);
        for (const n of r.notes) process.stdout.write(`  (${n})\n`);
      }),
    );

  gc.command("prune")
    .description(
      "find what a crash left behind (files without records, records without files, stale bundles and mounts) and remove it",
    )
    .option("--dry-run", "only list what would be removed")
    .option("-y, --yes", "remove what is found")
    .action(
      wire(async (ctx, cmd) => {
        const opts = cmd.opts<{ dryRun?: boolean; yes?: boolean }>();
        if (!opts.dryRun && !opts.yes)
          throw new Error("say --dry-run to list what would go, or --yes to remove it");
        const client = await ctx.client(GC);
        const r = await client.prune({ dryRun: !opts.yes }, ctx.call());
        for (const o of r.orphans) {
          const status = !opts.yes ? "would remove" : o.removed ? "removed" : "kept";
          const why = o.error ? ` (${o.error})` : "";
          process.stdout.write(`${status}\t${o.kind}\t${o.object}\t${o.detail}${why}\n`);
          if (opts.yes && !o.removed) process.exitCode = 1;
        }
        if (r.orphans.length === 0) process.stdout.write("nothing to prune\n");
      }),
    );

  program
    .command("check")
    .description("check that what the daemon holds is whole: blobs, snapshots, records, mounts, shims, tasks")
    .option("--quick", "do not hash blobs, only check that they are there")
    .option("--strict", "fail on warnings (debris, leaked mounts, orphaned shims) too")
    .action(
      wire(async (ctx, cmd) => {
        const opts = cmd.opts<{ quick?: boolean; strict?: boolean }>();
        const client = await ctx.client(GC);
        const r = await client.check({ skipVerify: opts.quick ?? false }, ctx.call());
        for (const p of r.problems)
          process.stdout.write(`${p.severity}: ${p.kind} ${p.object}: ${p.detail}\n`);
        const count = (s: string) => r.problems.filter((p) => p.severity === s).length;
        const errors = count("error");
        const warnings = count("warning");
        process.stdout.write(
          `checked ${r.images} images, ${r.blobsVerified} blobs hashed, ${r.snapshots} snapshots, ${r.tasks} tasks: ` +
            `${errors} errors, ${warnings} warnings, ${count("info")} collectable\n`,
        );
        if (errors > 0 || (opts.strict && warnings > 0)) process.exitCode = 1;
      }),
    );
}
