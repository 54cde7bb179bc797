// Pulls and pushes as the CLI runs them: one Transfer call (registry ↔ image store) in the
// daemon, with progress read from a Streaming stream (a live table on a TTY, a line per change
// otherwise) and credentials answered on an auth stream. Used by `images pull/push` and
// `content fetch`.
import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { type Any, anyIs, anyPack, anyUnpack } from "@bufbuild/protobuf/wkt";
import { hostPlatform, type Platform, parsePlatform } from "../../base/platforms.js";
import { formatReference, parseNormalized } from "../../core/reference.js";
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
import type { CliContext } from "./context.js";
import { defaultSnapshotter } from "./image-common.js";
import { humanSize, TabWriter } from "./table.js";

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

export async function pullImage(ctx: CliContext, ref: string, o: PullOpts): Promise<void> {
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
export async function pushImage(
  ctx: CliContext,
  ref: string,
  local: string | undefined,
  o: PushOpts,
): Promise<void> {
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

export interface RegistryOpts {
  plainHttp?: boolean;
  user?: string;
  hostsDir?: string;
}

export interface PushOpts extends RegistryOpts {
  platform?: string[];
}

export interface PullOpts extends RegistryOpts {
  platform?: string[];
  allPlatforms?: boolean;
  allMetadata?: boolean;
  snapshotter?: string;
  skipUnpack?: boolean;
}
