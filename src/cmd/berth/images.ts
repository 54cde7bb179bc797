// `berth images`: pull (daemon-side, through the Transfer service with progress on a Streaming
// stream), list, remove, tag, label and check images. Output follows ctr's.
import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { type Any, anyIs, anyPack, anyUnpack } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import { isAlreadyExists, isNotFound } from "../../base/errdefs.js";
import {
  formatPlatform,
  hostPlatform,
  matchesAny,
  type Platform,
  parsePlatform,
} from "../../base/platforms.js";
import { chainIds } from "../../core/pull/pull.js";
import { formatReference, parseNormalized } from "../../core/reference.js";
import { isIndexType } from "../../core/remotes/media.js";
import { Content } from "../../gen/containerd/services/content/v1/content_pb.js";
import { type Image, Images } from "../../gen/containerd/services/images/v1/images_pb.js";
import { Snapshots } from "../../gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { StreamInitSchema, Streaming } from "../../gen/containerd/services/streaming/v1/streaming_pb.js";
import { Transfer } from "../../gen/containerd/services/transfer/v1/transfer_pb.js";
import { ImageStoreSchema } from "../../gen/containerd/types/transfer/imagestore_pb.js";
import { type Progress, ProgressSchema } from "../../gen/containerd/types/transfer/progress_pb.js";
import {
  AuthRequestSchema,
  AuthResponseSchema,
  AuthType,
  OCIRegistrySchema,
} from "../../gen/containerd/types/transfer/registry_pb.js";
import type { Client } from "../../grpc/client.js";
import type { CliContext, Wire } from "./context.js";
import { registerImageArchive } from "./image-archive.js";
import { registerImageMount } from "./image-mount.js";
import { formatLabels, humanSize, parseLabelArgs, TabWriter } from "./table.js";

const collect = (v: string, prev: string[]) => [...prev, v];
const defaultSnapshotter = () => process.env.CONTAINERD_SNAPSHOTTER || "overlayfs";

/** Open a named stream on the Streaming service; resolves once the daemon registered it. */
async function openStream(ctx: CliContext) {
  const id = `${Date.now()}-${randomBytes(8).toString("hex")}`;
  const streaming = await ctx.client(Streaming);
  const call = streaming.stream(ctx.stream());
  await call.send(anyPack(StreamInitSchema, create(StreamInitSchema, { id })));
  const it = call.responses[Symbol.asyncIterator]();
  const first = await it.next();
  if (first.done) throw new Error("the daemon closed the stream before registering it");
  return { id, call, it };
}

interface LayerState {
  /** The state shown: resolving, waiting, downloading, unpacking, done, ... */
  event: string;
  /** Bytes downloaded so far, and of how many. */
  progress: number;
  total: number;
  /** When bytes started to arrive (for the rate), and when the download ended. */
  startedAt?: number;
  downloadedAt?: number;
  /** The daemon unpacks while it downloads: both can be under way at once. */
  unpacking: boolean;
  doneAt?: number;
}

const DONE_EVENTS = new Set(["complete", "already exists", "unpacked", "saved", "resolved"]);

/** Progress display: a live table on a TTY, a line per state change otherwise. */
class ProgressView {
  private readonly states = new Map<string, LayerState>();
  private readonly tty = process.stdout.isTTY === true;
  private drawn = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly start = Date.now();

  constructor() {
    if (this.tty) this.timer = setInterval(() => this.draw(), 100);
  }

  update(p: Progress): void {
    const now = Date.now();
    const prev = this.states.get(p.name);
    const s: LayerState = prev ?? { event: p.event, progress: 0, total: 0, unpacking: false };
    const shown = this.label(s);
    s.total = Number(p.total) || s.total;
    switch (p.event) {
      case "downloading":
        s.startedAt ??= now;
        s.progress = Math.max(s.progress, Number(p.progress));
        break;
      case "complete":
      case "already exists":
        s.downloadedAt ??= now;
        s.progress = s.total;
        break;
      case "unpacking":
        s.unpacking = true;
        break;
      case "unpacked":
        s.unpacking = false;
        s.doneAt = now;
        break;
      default:
        if (DONE_EVENTS.has(p.event)) s.doneAt = now;
    }
    // once a blob's bytes are all in, later "downloading" reports change nothing
    if (p.event !== "downloading" || s.downloadedAt === undefined) s.event = p.event;
    this.states.set(p.name, s);
    const label = this.label(s);
    if (!this.tty && (prev === undefined || label !== shown)) {
      const bytes = s.total ? ` ${humanSize(s.progress)}/${humanSize(s.total)}` : "";
      process.stdout.write(`${p.name}: ${label}${bytes}\n`);
    }
  }

  /** The state column: a layer can be downloading and unpacking at the same time. */
  private label(s: LayerState): string {
    if (s.event === "unpacked" || s.event === "saved") return "done";
    const downloading = s.startedAt !== undefined && s.downloadedAt === undefined;
    if (s.unpacking) return downloading ? "downloading+unpacking" : "unpacking";
    if (downloading) return "downloading";
    return s.event;
  }

  private line(name: string, s: LayerState): string {
    const until = s.downloadedAt ?? Date.now();
    const secs = s.startedAt !== undefined ? (until - s.startedAt) / 1000 : 0;
    const rate = secs > 0 && s.progress > 0 ? `${humanSize(s.progress / secs)}/s` : "";
    const bytes = s.total ? `${humanSize(s.progress)}/${humanSize(s.total)}` : "";
    return `${name.length > 60 ? `${name.slice(0, 57)}...` : name}\t${this.label(s)}\t${bytes}\t${rate}`;
  }

  private draw(): void {
    const tw = new TabWriter();
    for (const [name, s] of this.states) tw.row(this.line(name, s));
    tw.row(`elapsed: ${((Date.now() - this.start) / 1000).toFixed(1)}s`);
    const text = tw.toString();
    if (this.drawn > 0) process.stdout.write(`\x1b[${this.drawn}A\x1b[J`);
    process.stdout.write(text);
    this.drawn = text.split("\n").length - 1;
  }

  finish(): void {
    if (this.timer) clearInterval(this.timer);
    if (this.tty) this.draw();
  }
}

/** Run one Transfer call with a progress stream (and an auth stream when --user was given). */
async function runTransfer(
  ctx: CliContext,
  o: { user?: string },
  make: (authStream: string) => { source: Any; destination: Any },
): Promise<void> {
  const progress = await openStream(ctx);
  const view = new ProgressView();
  const progressDone = (async () => {
    for (;;) {
      const r = await progress.it.next();
      if (r.done) break;
      if (anyIs(r.value, ProgressSchema)) view.update(anyUnpack(r.value, ProgressSchema)!);
    }
  })().catch(() => {});

  // Credentials go on an auth stream the daemon asks on (as ctr 2.x does); never printed.
  let auth: Awaited<ReturnType<typeof openStream>> | undefined;
  if (o.user !== undefined) {
    const i = o.user.indexOf(":");
    const username = i < 0 ? o.user : o.user.slice(0, i);
    const secret = i < 0 ? (process.env.BERTH_REGISTRY_PASSWORD ?? "") : o.user.slice(i + 1);
    auth = await openStream(ctx);
    const a = auth;
    void (async () => {
      for (;;) {
        const r = await a.it.next();
        if (r.done) break;
        if (!anyIs(r.value, AuthRequestSchema)) continue;
        await a.call.send(
          anyPack(
            AuthResponseSchema,
            create(AuthResponseSchema, { authType: AuthType.CREDENTIALS, username, secret }),
          ),
        );
      }
    })().catch(() => {});
  }

  const transfer = await ctx.client(Transfer);
  try {
    await transfer.transfer(
      { ...make(auth?.id ?? ""), options: { progressStream: progress.id } },
      ctx.stream(),
    );
  } finally {
    await progressDone;
    view.finish();
    progress.call.end();
    auth?.call.end();
  }
}

const registryResolver = (o: RegistryOpts, authStream: string) => ({
  authStream,
  hostDir: o.hostsDir ?? "",
  defaultScheme: o.plainHttp ? "http" : "",
});

async function pull(ctx: CliContext, ref: string, o: PullOpts): Promise<void> {
  const platforms: Platform[] = (o.platform ?? []).map(parsePlatform);
  if (platforms.length > 0 && o.allPlatforms)
    throw new Error("cannot specify both --platform and --all-platforms");
  if (platforms.length === 0 && !o.allPlatforms) platforms.push(hostPlatform());
  const name = formatReference(parseNormalized(ref));
  const snapshotter = o.snapshotter || defaultSnapshotter();
  const t0 = Date.now();
  await runTransfer(ctx, o, (authStream) => ({
    source: anyPack(
      OCIRegistrySchema,
      create(OCIRegistrySchema, { reference: name, resolver: registryResolver(o, authStream) }),
    ),
    destination: anyPack(
      ImageStoreSchema,
      create(ImageStoreSchema, {
        name,
        platforms: platforms.map((p) => ({
          os: p.os,
          architecture: p.architecture,
          variant: p.variant ?? "",
        })),
        allMetadata: o.allMetadata ?? false,
        unpacks: o.skipUnpack
          ? []
          : platforms.map((p) => ({
              platform: { os: p.os, architecture: p.architecture, variant: p.variant ?? "" },
              snapshotter,
            })),
      }),
    ),
  }));
  process.stdout.write(`${name}: pulled in ${((Date.now() - t0) / 1000).toFixed(1)}s\n`);
}

/** Daemon-side push (Transfer: image store → registry). LOCAL defaults to REF. */
async function push(ctx: CliContext, ref: string, local: string | undefined, o: PushOpts): Promise<void> {
  const name = formatReference(parseNormalized(ref));
  const image = local ?? name;
  const platforms: Platform[] = (o.platform ?? []).map(parsePlatform);
  const t0 = Date.now();
  await runTransfer(ctx, o, (authStream) => ({
    source: anyPack(
      ImageStoreSchema,
      create(ImageStoreSchema, {
        name: image,
        platforms: platforms.map((p) => ({
          os: p.os,
          architecture: p.architecture,
          variant: p.variant ?? "",
        })),
      }),
    ),
    destination: anyPack(
      OCIRegistrySchema,
      create(OCIRegistrySchema, { reference: name, resolver: registryResolver(o, authStream) }),
    ),
  }));
  process.stdout.write(`${name}: pushed in ${((Date.now() - t0) / 1000).toFixed(1)}s\n`);
}

interface RegistryOpts {
  plainHttp?: boolean;
  user?: string;
  hostsDir?: string;
}

interface PushOpts extends RegistryOpts {
  platform?: string[];
}

interface PullOpts extends RegistryOpts {
  platform?: string[];
  allPlatforms?: boolean;
  allMetadata?: boolean;
  snapshotter?: string;
  skipUnpack?: boolean;
}

interface Json {
  mediaType?: string;
  manifests?: { mediaType: string; digest: string; size: number; platform?: Platform }[];
  config?: { digest: string; size: number };
  layers?: { digest: string; size: number }[];
  rootfs?: { diff_ids?: string[] };
  os?: string;
  architecture?: string;
  variant?: string;
}

/** Reads and checks image content through the Content service. */
class ContentReader {
  constructor(
    private readonly ctx: CliContext,
    private readonly content: Client<typeof Content>,
  ) {}

  static async open(ctx: CliContext): Promise<ContentReader> {
    return new ContentReader(ctx, await ctx.client(Content));
  }

  async json(digest: string): Promise<Json> {
    const parts: Uint8Array[] = [];
    for await (const r of this.content.read({ digest }, this.ctx.call())) parts.push(r.data);
    return JSON.parse(Buffer.concat(parts).toString("utf8")) as Json;
  }

  async has(digest: string): Promise<boolean> {
    try {
      await this.content.info({ digest }, this.ctx.call());
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }
}

/** The manifest for `want` under a target (the target itself when it is a manifest). */
async function manifestFor(
  cr: ContentReader,
  target: { digest: string; mediaType: string; size: number },
  want: Platform[],
): Promise<{ digest: string; size: number; json: Json } | undefined> {
  if (!isIndexType(target.mediaType))
    return { digest: target.digest, size: target.size, json: await cr.json(target.digest) };
  const idx = await cr.json(target.digest);
  for (const m of idx.manifests ?? []) {
    if (isIndexType(m.mediaType)) {
      const r = await manifestFor(cr, m, want);
      if (r) return r;
    } else if (m.platform && matchesAny(want, m.platform)) {
      if (!(await cr.has(m.digest))) continue;
      return { digest: m.digest, size: m.size, json: await cr.json(m.digest) };
    }
  }
  return undefined;
}

async function platformsOf(
  cr: ContentReader,
  target: { digest: string; mediaType: string },
): Promise<string[]> {
  const j = await cr.json(target.digest);
  if (isIndexType(target.mediaType)) {
    const out: string[] = [];
    for (const m of j.manifests ?? []) if (m.platform) out.push(formatPlatform(m.platform));
    return out;
  }
  if (!j.config) return [];
  const c = await cr.json(j.config.digest);
  return c.architecture
    ? [formatPlatform({ os: c.os ?? "linux", architecture: c.architecture, variant: c.variant })]
    : [];
}

const targetOf = (i: Image) => ({
  digest: i.target?.digest ?? "",
  mediaType: i.target?.mediaType ?? "",
  size: Number(i.target?.size ?? 0n),
});

async function imageSize(cr: ContentReader, i: Image): Promise<number> {
  const t = targetOf(i);
  const m = await manifestFor(cr, t, [hostPlatform()]);
  if (!m) throw new Error("no manifest for the default platform");
  let size = (isIndexType(t.mediaType) ? t.size : 0) + m.size + (m.json.config?.size ?? 0);
  for (const l of m.json.layers ?? []) size += l.size;
  return size;
}

/** `berth content fetch`: a pull that fetches content only (no unpack), through the daemon. */
export function registerContentFetch(content: Command, wire: Wire): void {
  content
    .command("fetch")
    .description("fetch all content for an image into the daemon (no unpack)")
    .argument("<ref>", "image reference")
    .option("--plain-http", "allow connections using plain HTTP")
    .option("-u, --user <user[:password]>", "user[:password] registry credentials")
    .option("--platform <platform>", "fetch content for a platform (repeatable)", collect, [])
    .option("--all-platforms", "fetch content for all platforms")
    .option("--all-metadata", "fetch the manifests and configs of every platform")
    .option("--hosts-dir <dir>", "custom hosts configuration directory")
    .action(
      wire(async (ctx, cmd) => {
        await pull(ctx, cmd.args[0]!, { ...cmd.opts<PullOpts>(), skipUnpack: true });
      }),
    );
}

export function registerImages(program: Command, wire: Wire): void {
  const images = program.command("images").aliases(["image", "i"]).description("manage images");

  images
    .command("pull")
    .description("pull an image from a registry, unpacking it in the daemon (Transfer service)")
    .argument("<ref>", "image reference")
    .option("--plain-http", "allow connections using plain HTTP")
    .option("-u, --user <user[:password]>", "user[:password] registry credentials")
    .option("--platform <platform>", "pull content for a platform (repeatable)", collect, [])
    .option("--all-platforms", "pull content and metadata for all platforms")
    .option("--hosts-dir <dir>", "custom hosts configuration directory")
    .option("--snapshotter <name>", "snapshotter to unpack into [$CONTAINERD_SNAPSHOTTER]")
    .option("--skip-unpack", "fetch only, do not unpack")
    .action(
      wire(async (ctx, cmd) => {
        await pull(ctx, cmd.args[0]!, cmd.opts<PullOpts>());
      }),
    );

  images
    .command("push")
    .description("push an image to a registry from the daemon's image store (Transfer service)")
    .argument("<ref>", "destination reference")
    .argument("[local]", "local image to push (default: the destination reference)")
    .option("--plain-http", "allow connections using plain HTTP")
    .option("-u, --user <user[:password]>", "user[:password] registry credentials")
    .option("--platform <platform>", "push content for a platform only (repeatable)", collect, [])
    .option("--hosts-dir <dir>", "custom hosts configuration directory")
    .action(
      wire(async (ctx, cmd) => {
        await push(ctx, cmd.args[0]!, cmd.args[1], cmd.opts<PushOpts>());
      }),
    );

  registerImageArchive(images, wire);
  registerImageMount(images, wire);

  images
    .command("list")
    .alias("ls")
    .description("list images known to the daemon")
    .argument("[filters...]", "filters")
    .option("-q, --quiet", "print only the image refs")
    .action(
      wire(async (ctx, cmd) => {
        const client = await ctx.client(Images);
        const { images: list } = await client.list({ filters: cmd.args }, ctx.call());
        if (cmd.opts<{ quiet?: boolean }>().quiet) {
          for (const i of list) process.stdout.write(`${i.name}\n`);
          return;
        }
        const cr = await ContentReader.open(ctx);
        const tw = new TabWriter().row("REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS", "");
        for (const i of list) {
          const t = targetOf(i);
          const size = await imageSize(cr, i).then(humanSize, () => "-");
          const plats = await platformsOf(cr, t).then(
            (p) => p.join(","),
            () => "-",
          );
          tw.row(i.name, t.mediaType, t.digest, size, plats, formatLabels(i.labels, "-"), "");
        }
        tw.flush();
      }),
    );

  images
    .command("remove")
    .alias("rm")
    .description("remove one or more images by reference")
    .argument("<ref...>", "image references")
    .option("--sync", "synchronously remove image and all associated resources")
    .action(
      wire(async (ctx, cmd) => {
        const client = await ctx.client(Images);
        const sync = cmd.opts<{ sync?: boolean }>().sync ?? false;
        let failed = false;
        for (const name of cmd.args) {
          try {
            await client.delete({ name, sync }, ctx.call());
            process.stdout.write(`${name}\n`);
          } catch (err) {
            if (isNotFound(err)) {
              process.stderr.write(`berth: ${name}: image not found\n`);
              continue;
            }
            process.stderr.write(`berth: unable to delete ${name}: ${(err as Error).message}\n`);
            failed = true;
          }
        }
        if (failed) process.exitCode = 1;
      }),
    );

  images
    .command("tag")
    .description("tag an image")
    .argument("<source>", "source image")
    .argument("<target...>", "new references")
    .option("--force", "force the tag even if it already exists")
    .action(
      wire(async (ctx, cmd) => {
        const client = await ctx.client(Images);
        const [src, ...targets] = cmd.args as [string, ...string[]];
        const { image } = await client.get({ name: src }, ctx.call());
        const force = cmd.opts<{ force?: boolean }>().force ?? false;
        for (const t of targets) {
          const img = { name: t, target: image!.target, labels: image!.labels };
          try {
            await client.create({ image: img }, ctx.call());
          } catch (err) {
            if (!force || !isAlreadyExists(err)) throw err;
            await client.delete({ name: t }, ctx.call());
            await client.create({ image: img }, ctx.call());
          }
          process.stdout.write(`${t}\n`);
        }
      }),
    );

  images
    .command("label")
    .description("set and clear labels for an image (KEY= clears)")
    .argument("<ref>", "image reference")
    .argument("[labels...]", "KEY=VALUE labels")
    .action(
      wire(async (ctx, cmd) => {
        const client = await ctx.client(Images);
        const [name, ...args] = cmd.args as [string, ...string[]];
        const labels = parseLabelArgs(args);
        const paths = Object.keys(labels).map((k) => `labels.${k}`);
        const { image } = await client.update({ image: { name, labels }, updateMask: { paths } }, ctx.call());
        const shown = Object.entries(labels)
          .filter(([k]) => image?.labels[k] !== undefined)
          .map(([k, v]) => `${k}=${v}`);
        process.stdout.write(`${shown.join(",")}\n`);
      }),
    );

  images
    .command("check")
    .description("check existing images to ensure all content is available locally")
    .argument("[filters...]", "filters")
    .option("-q, --quiet", "print only the ready image refs")
    .option("--snapshotter <name>", "snapshotter to check unpacking in")
    .action(
      wire(async (ctx, cmd) => {
        const o = cmd.opts<{ quiet?: boolean; snapshotter?: string }>();
        const snapshotter = o.snapshotter || defaultSnapshotter();
        const client = await ctx.client(Images);
        const snaps = await ctx.client(Snapshots);
        const cr = await ContentReader.open(ctx);
        const { images: list } = await client.list({ filters: cmd.args }, ctx.call());
        const tw = new TabWriter().row("REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED");
        for (const i of list) {
          const t = targetOf(i);
          let total = 0;
          let have = 0;
          let size = 0;
          let sizeAvail = 0;
          let unpacked = false;
          const count = async (d: { digest: string; size: number }) => {
            total++;
            size += d.size;
            if (await cr.has(d.digest)) {
              have++;
              sizeAvail += d.size;
              return true;
            }
            return false;
          };
          try {
            if (await count(t)) {
              const m = await manifestFor(cr, t, [hostPlatform()]);
              if (m) {
                if (isIndexType(t.mediaType)) await count(m);
                if (m.json.config && (await count(m.json.config))) {
                  const cfg = await cr.json(m.json.config.digest);
                  const top = chainIds(cfg.rootfs?.diff_ids ?? []).pop();
                  if (top)
                    unpacked = await snaps.stat({ snapshotter, key: top }, ctx.call()).then(
                      () => true,
                      () => false,
                    );
                }
                for (const l of m.json.layers ?? []) await count(l);
              }
            }
          } catch {
            // counted as missing
          }
          const complete = have === total && total > 0;
          if (o.quiet) {
            if (complete) process.stdout.write(`${i.name}\n`);
            continue;
          }
          tw.row(
            i.name,
            t.mediaType,
            t.digest,
            `${complete ? "complete" : "incomplete"} (${have}/${total})`,
            `${humanSize(sizeAvail)}/${humanSize(size)}`,
            String(unpacked),
          );
        }
        if (!o.quiet) tw.flush();
      }),
    );
}
