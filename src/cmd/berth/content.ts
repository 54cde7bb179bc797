// `berth content`: list, read, ingest, delete and label blobs, and show active ingests.
import { once } from "node:events";
import { createReadStream, fstatSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { toJson } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import { isAlreadyExists, isKind, isNotFound } from "../../base/errdefs.js";
import {
  Content,
  InfoSchema,
  StatusSchema,
  WriteAction,
  type WriteContentResponse,
} from "../../gen/containerd/services/content/v1/content_pb.js";
import type { CliContext, Wire } from "./context.js";
import { collect } from "./image-common.js";
import { type PullOpts, pullImage } from "./image-transfer.js";
import {
  formatLabels,
  humanAge,
  humanSize,
  parseLabelArgs,
  printJson,
  TABS,
  TabWriter,
  wantsJson,
} from "./table.js";

/** Size of each WRITE message of an ingest. */
export const INGEST_CHUNK = 1 << 20;
const DIGEST_HEX_LENGTH = new Map([
  ["sha256", 64],
  ["sha384", 96],
  ["sha512", 128],
]);

/** Check a digest string (`algorithm:hex`) the way the OCI digest rules do; returns it. */
export function validateDigest(s: string): string {
  const i = s.indexOf(":");
  if (i <= 0 || i + 1 === s.length) throw new Error("invalid checksum digest format");
  const hexLength = DIGEST_HEX_LENGTH.get(s.slice(0, i));
  if (hexLength === undefined) {
    if (!/^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/.test(s)) {
      throw new Error("invalid checksum digest format");
    }
    throw new Error("unsupported digest algorithm");
  }
  const hex = s.slice(i + 1);
  if (hex.length !== hexLength) throw new Error("invalid checksum digest length");
  if (!/^[a-f0-9]+$/.test(hex)) throw new Error("invalid checksum digest format");
  return s;
}

/** Re-cut a byte stream into chunks of exactly `size` bytes (the last may be shorter). */
export async function* rechunk(source: AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let have = 0;
  for await (const piece of source) {
    let buf = Buffer.isBuffer(piece) ? piece : Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
    while (have + buf.length >= size) {
      const take = size - have;
      parts.push(buf.subarray(0, take));
      yield parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
      buf = buf.subarray(take);
      parts = [];
      have = 0;
    }
    if (buf.length > 0) {
      // Copy: the source may reuse its buffer once we pull the next piece.
      parts.push(Buffer.from(buf));
      have += buf.length;
    }
  }
  if (have > 0) yield Buffer.concat(parts, have);
}

/** Drop the first `count` bytes of a stream. */
async function* skipBytes(source: AsyncIterable<Uint8Array>, count: number): AsyncGenerator<Uint8Array> {
  let left = count;
  for await (const piece of source) {
    if (left >= piece.length) {
      left -= piece.length;
      continue;
    }
    yield left > 0 ? piece.subarray(left) : piece;
    left = 0;
  }
}

/** Standard input from `offset` on: seek when it is a regular file, read past it otherwise. */
function stdinFrom(offset: number): AsyncIterable<Uint8Array> {
  let regular = false;
  try {
    regular = fstatSync(0).isFile();
  } catch {
    regular = false;
  }
  if (regular) {
    return createReadStream("", { fd: 0, start: offset, highWaterMark: INGEST_CHUNK, autoClose: false });
  }
  return offset > 0 ? skipBytes(process.stdin, offset) : process.stdin;
}

interface IngestOptions {
  ref: string;
  /** Expected total size; 0 when unknown. */
  size: bigint;
  /** Expected digest; "" when unknown. */
  expected: string;
  labels: Record<string, string>;
}

/**
 * Ingest standard input through the Write stream: STAT to learn how much of `ref` is already
 * there (resume), WRITE the rest in 1 MiB chunks at explicit offsets, then COMMIT. Content that
 * already exists counts as success. Like ctr, no lease is taken: the committed blob is
 * unreferenced and the next garbage collection may remove it.
 */
async function ingest(ctx: CliContext, o: IngestOptions): Promise<void> {
  const content = await ctx.client(Content);
  const deadline = ctx.globals.timeoutMs ? Date.now() + ctx.globals.timeoutMs : Number.POSITIVE_INFINITY;
  let retry = 16;
  for (;;) {
    const call = content.write(ctx.stream());
    const responses = call.responses[Symbol.asyncIterator]();
    const next = async (what: string): Promise<WriteContentResponse> => {
      const r = await responses.next();
      if (r.done) throw new Error(`${what}: write stream closed by the server`);
      return r.value;
    };
    let offset: bigint;
    try {
      await call.send({ action: WriteAction.STAT, ref: o.ref, total: o.size, expected: o.expected });
      offset = (await next("stat")).offset;
    } catch (err) {
      call.cancel();
      if (isAlreadyExists(err)) return;
      // Unavailable means another writer holds the ref: wait and try again, as ctr does.
      if (isKind(err, "unavailable") && Date.now() < deadline) {
        if (retry === 16) {
          process.stderr.write(`berth: ref ${o.ref} is in use by another writer; waiting for it\n`);
        }
        ctx.debug(`ref ${o.ref} is busy: ${(err as Error).message}; retrying`);
        await sleep(Math.floor(Math.random() * retry));
        retry = Math.min(retry * 2, 2048);
        continue;
      }
      throw err;
    }
    try {
      await transfer(o, offset, call, next);
    } catch (err) {
      call.cancel();
      throw err;
    }
    return;
  }
}

async function transfer(
  o: IngestOptions,
  start: bigint,
  call: { send(m: object): Promise<void>; end(): void },
  next: (what: string) => Promise<WriteContentResponse>,
): Promise<void> {
  if (o.size > 0n && start > o.size) {
    throw new Error(
      `ref ${JSON.stringify(o.ref)} already has ${start} bytes, more than the expected ${o.size}`,
    );
  }
  let offset = start;
  for await (const chunk of rechunk(stdinFrom(Number(start)), INGEST_CHUNK)) {
    await call.send({ action: WriteAction.WRITE, offset, data: chunk });
    await next("write");
    offset += BigInt(chunk.length);
  }
  if (o.size > 0n && offset < o.size) {
    throw new Error("failed to read expected number of bytes: unexpected EOF");
  }
  let res: WriteContentResponse;
  try {
    await call.send({
      action: WriteAction.COMMIT,
      total: o.size,
      offset,
      expected: o.expected,
      labels: o.labels,
    });
    res = await next("commit");
  } catch (err) {
    if (isAlreadyExists(err)) return;
    throw new Error(`failed commit on ref ${JSON.stringify(o.ref)}: ${(err as Error).message}`);
  }
  if (o.size > 0n && res.offset !== o.size) {
    throw new Error(`unexpected commit size ${res.offset}, expected ${o.size}`);
  }
  if (o.expected && res.digest !== o.expected) {
    throw new Error(`unexpected commit digest ${res.digest}, expected ${o.expected}`);
  }
  call.end();
  // Wait for the server to close its side.
  for (;;) {
    try {
      await next("close");
    } catch {
      break;
    }
  }
}

async function writeOut(data: Uint8Array): Promise<void> {
  if (data.length > 0 && !process.stdout.write(data)) await once(process.stdout, "drain");
}

export function registerContent(program: Command, wire: Wire): void {
  const content = program.command("content").description("manage content");

  // a pull that fetches content only (no unpack), through the daemon
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
        await pullImage(ctx, cmd.args[0]!, { ...cmd.opts<PullOpts>(), skipUnpack: true });
      }),
    );

  content
    .command("active")
    .description("display the ongoing transfers")
    .argument("[regexp]", "only refs matching this filter")
    .option("-q, --quiet", "print only the refs")
    .option("--format <format>", "output format: table or json", "table")
    .action(
      wire(async (ctx, cmd) => {
        const opts = cmd.opts<{ quiet?: boolean; format?: string }>();
        const json = wantsJson(opts.format);
        const client = await ctx.client(Content);
        const { statuses } = await client.listStatuses({ filters: cmd.args.slice(0, 1) }, ctx.call());
        if (json) {
          printJson(statuses.map((s) => toJson(StatusSchema, s)));
          return;
        }
        if (opts.quiet) {
          for (const s of statuses) process.stdout.write(`${s.ref}\n`);
          return;
        }
        const now = Date.now();
        const tw = new TabWriter(TABS).row("REF", "SIZE", "AGE", "");
        for (const s of statuses) {
          const started = s.startedAt ? timestampDate(s.startedAt) : undefined;
          tw.row(s.ref, humanSize(s.offset), humanAge(started, now), "");
        }
        tw.flush();
      }),
    );

  content
    .command("delete")
    .aliases(["del", "remove", "rm"])
    .description("permanently delete one or more blobs; deleted blobs are printed")
    .argument("<digest...>", "blobs to delete")
    .action(
      wire(async (ctx, cmd) => {
        const client = await ctx.client(Content);
        for (const arg of cmd.args) {
          try {
            validateDigest(arg);
            await client.delete({ digest: arg }, ctx.call());
          } catch (err) {
            if (!isNotFound(err)) ctx.fail(`could not delete ${arg}: ${(err as Error).message}`);
            continue;
          }
          process.stdout.write(`${arg}\n`);
        }
      }),
    );

  content
    .command("get")
    .description("write the data of one or more blobs to stdout")
    .argument("<digest...>", "blobs to read")
    .action(
      wire(async (ctx, cmd) => {
        for (const d of cmd.args) validateDigest(d);
        const client = await ctx.client(Content);
        for (const digest of cmd.args) {
          for await (const chunk of client.read({ digest }, ctx.stream())) await writeOut(chunk.data);
        }
      }),
    );

  content
    .command("ingest")
    .description("accept content from stdin into the store, resuming an earlier partial ingest of REF")
    .argument("<ref>", "ingest reference (transaction key)")
    .option("--expected-size <size>", "validate against provided size", "0")
    .option("--expected-digest <digest>", "verify content against expected digest")
    .option(
      "--label <label>",
      "label the committed blob, KEY=VALUE (repeatable)",
      (v: string, prev: string[]) => [...prev, v],
      [] as string[],
    )
    .action(
      wire(async (ctx, cmd) => {
        const opts = cmd.opts<{ expectedSize: string; expectedDigest?: string; label?: string[] }>();
        const [ref] = cmd.args as [string];
        if (!/^\d+$/.test(opts.expectedSize)) {
          throw new Error(`invalid --expected-size ${JSON.stringify(opts.expectedSize)}`);
        }
        const expected = opts.expectedDigest ?? "";
        if (expected) validateDigest(expected);
        await ingest(ctx, {
          ref,
          size: BigInt(opts.expectedSize),
          expected,
          labels: parseLabelArgs(opts.label ?? []),
        });
      }),
    );

  content
    .command("list")
    .alias("ls")
    .description("list blobs in the content store")
    .argument("[filters...]", 'filters, e.g. labels."KEY"==VALUE')
    .option("-q, --quiet", "print only the blob digest")
    .option("--format <format>", "output format: table or json", "table")
    .action(
      wire(async (ctx, cmd) => {
        const opts = cmd.opts<{ quiet?: boolean; format?: string }>();
        const json = wantsJson(opts.format);
        const client = await ctx.client(Content);
        const now = Date.now();
        const all: unknown[] = [];
        const tw = new TabWriter(TABS).write("DIGEST\tSIZE\tAGE\tLABELS\n");
        for await (const res of client.list({ filters: cmd.args }, ctx.call())) {
          for (const info of res.info) {
            if (json) all.push(toJson(InfoSchema, info));
            else if (opts.quiet) process.stdout.write(`${info.digest}\n`);
            else {
              const created = info.createdAt ? timestampDate(info.createdAt) : undefined;
              tw.row(
                info.digest,
                humanSize(info.size),
                humanAge(created, now),
                formatLabels(info.labels, "-"),
              );
            }
          }
        }
        if (json) printJson(all);
        else if (!opts.quiet) tw.flush();
      }),
    );

  content
    .command("label")
    .description("add, change or clear (KEY=) labels of a blob; prints the resulting labels")
    .argument("<digest>", "blob to label")
    .argument("[labels...]", "labels as KEY=VALUE (KEY= clears)")
    .action(
      wire(async (ctx, cmd) => {
        const [digest, ...args] = cmd.args as [string, ...string[]];
        validateDigest(digest);
        const labels = parseLabelArgs(args);
        const paths = Object.keys(labels).map((k) => `labels.${k}`);
        const set = Object.fromEntries(Object.entries(labels).filter(([, v]) => v !== ""));
        const client = await ctx.client(Content);
        const info =
          paths.length === 0
            ? (await client.info({ digest }, ctx.call())).info
            : (await client.update({ info: { digest, labels: set }, updateMask: { paths } }, ctx.call()))
                .info;
        process.stdout.write(`${formatLabels(info?.labels)}\n`);
      }),
    );
}
