// The Content gRPC service: a thin adapter over the namespaced content store. The Write stream
// is containerd's ingest protocol: the first message names the ref (and may announce total and
// expected digest); then STAT answers the writer's status, WRITE appends data at the current
// offset (offset 0 on a non-empty ingest starts over), COMMIT writes any last data and commits.
import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { BerthError, errCanceled, errorf, wrap } from "../base/errdefs.js";
import type { Info, ReaderAt, Status } from "../core/content/local.js";
import { digestError } from "../core/content/local.js";
import type { MetadataContentStore } from "../core/content/metadata.js";
import {
  type Content,
  type InfoSchema,
  ReadContentResponseSchema,
  type StatusSchema,
  WriteAction,
  type WriteContentResponseSchema,
} from "../gen/containerd/services/content/v1/content_pb.js";
import { EncodedMessage } from "../grpc/handlers.js";
import type { ServiceImpl } from "../grpc/service.js";
import { FRAME_HEADER } from "../grpc/wire.js";
import { contentInfosResponse } from "./content-wire.js";

/** Blobs per List message, as containerd batches them. */
const LIST_BATCH = 100;
/** Bytes per Read message. */
const READ_CHUNK = 1 << 20;
/** Reads up to this size are done in place (blocking), bigger ones on the thread pool. */
const SYNC_READ_MAX = 64 << 10;

const varintSize = (n: number): number => {
  let k = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    k++;
  }
  return k;
};

function putVarint(buf: Buffer, p: number, n: number): number {
  while (n >= 0x80) {
    buf[p++] = (n % 0x80) | 0x80;
    n = Math.floor(n / 0x80);
  }
  buf[p++] = n;
  return p;
}

/**
 * One ReadContentResponse in wire form: `offset` (field 1, varint, left out when 0), then `data`
 * (field 2, length-delimited) holding `length` bytes of the blob from `pos`, read straight into
 * the message buffer.
 */
async function readReply(
  ra: ReaderAt,
  pos: number,
  offset: number,
  length: number,
): Promise<{ msg: EncodedMessage<typeof ReadContentResponseSchema>; dataLength: number }> {
  const head = FRAME_HEADER + (offset === 0 ? 0 : 1 + varintSize(offset));
  const buf = Buffer.allocUnsafe(head + 1 + varintSize(length) + length);
  let p = FRAME_HEADER;
  if (offset !== 0) {
    buf[p++] = 0x08;
    p = putVarint(buf, p, offset);
  }
  buf[p++] = 0x12;
  p = putVarint(buf, p, length);
  const data = buf.subarray(p);
  const n = length <= SYNC_READ_MAX && ra.readAtSync ? ra.readAtSync(data, pos) : await ra.readAt(data, pos);
  if (n < length) {
    // the file is shorter than it should be: send what is there
    const msg = create(ReadContentResponseSchema, { offset: BigInt(offset), data: data.subarray(0, n) });
    const body = toBinary(ReadContentResponseSchema, msg);
    const framed = Buffer.allocUnsafe(FRAME_HEADER + body.length);
    framed.set(body, FRAME_HEADER);
    return { msg: new EncodedMessage(framed), dataLength: n };
  }
  return { msg: new EncodedMessage(buf), dataLength: n };
}

export function infoToProto(i: Info): MessageInitShape<typeof InfoSchema> {
  return {
    digest: i.digest,
    size: BigInt(i.size),
    createdAt: timestampFromDate(i.createdAt),
    updatedAt: timestampFromDate(i.updatedAt),
    labels: i.labels,
  };
}

function statusToProto(s: Status): MessageInitShape<typeof StatusSchema> {
  return {
    startedAt: timestampFromDate(s.startedAt),
    updatedAt: timestampFromDate(s.updatedAt),
    ref: s.ref,
    offset: BigInt(s.offset),
    total: BigInt(s.total),
    expected: s.expected,
  };
}

/** The next request, or a Canceled error as soon as the call is cancelled. */
function nextOrCancel<T>(it: AsyncIterator<T>, signal: AbortSignal): Promise<IteratorResult<T>> {
  if (signal.aborted) return Promise.reject(errCanceled("context canceled"));
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(errCanceled("context canceled"));
    signal.addEventListener("abort", onAbort, { once: true });
    it.next().then(
      (r) => {
        signal.removeEventListener("abort", onAbort);
        resolve(r);
      },
      (err) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}

export function contentService(store: MetadataContentStore): ServiceImpl<typeof Content> {
  return {
    info(req, ctx) {
      const ns = ctx.namespace();
      if (digestError(req.digest))
        throw errorf("invalid argument", `${JSON.stringify(req.digest)} failed validation`);
      return contentInfosResponse([store.info(ns, req.digest)]);
    },

    update(req, ctx) {
      const ns = ctx.namespace();
      const digest = req.info?.digest ?? "";
      if (digestError(digest))
        throw errorf("invalid argument", `${JSON.stringify(digest)} failed validation`);
      const info = store.update(ns, { digest, labels: req.info?.labels ?? {} }, req.updateMask?.paths ?? []);
      return { info: infoToProto(info) };
    },

    async *list(req, ctx) {
      const ns = ctx.namespace();
      // every batch is encoded before the first is sent: the rows are read in one go
      const batches: ReturnType<typeof contentInfosResponse>[] = [];
      let batch: Info[] = [];
      store.each(ns, req.filters, (info) => {
        batch.push(info);
        if (batch.length === LIST_BATCH) {
          batches.push(contentInfosResponse(batch));
          batch = [];
        }
      });
      if (batch.length > 0) batches.push(contentInfosResponse(batch));
      yield* batches;
    },

    delete(req, ctx) {
      const ns = ctx.namespace();
      const e = digestError(req.digest);
      if (e) throw errorf("invalid argument", e);
      store.delete(ns, req.digest, ctx.lease());
      return {};
    },

    async *read(req, ctx) {
      const ns = ctx.namespace();
      const e = digestError(req.digest);
      if (e) throw errorf("invalid argument", `${req.digest}: ${e}`);
      // one visibility check; the blob's size is the file's (the same as its info's)
      const ra = await store.readerAt(ns, req.digest);
      const blobSize = ra.size;
      try {
        let offset = Number(req.offset);
        let size = Number(req.size);
        if (offset < 0) offset = 0;
        if (offset > blobSize) throw errorf("out of range", `read past object length ${blobSize} bytes`);
        // size is how much to read, not the blob's size; past the end reads to the end
        if (size <= 0 || offset + size > blobSize) size = blobSize - offset;
        // containerd numbers reply offsets from the start of this read, not of the blob. Each
        // reply is laid out in wire form and the file is read straight into it; the next one is
        // read while this one is sent, unless it is small enough to read on the spot.
        let sent = 0;
        let next = size > 0 ? readReply(ra, offset, 0, Math.min(READ_CHUNK, size)) : undefined;
        try {
          while (next) {
            const reply = await next;
            next = undefined;
            const n = reply.dataLength;
            if (n === 0) return; // the file is shorter than its record
            sent += n;
            if (sent < size) next = readReply(ra, offset + sent, sent, Math.min(READ_CHUNK, size - sent));
            if (ctx.cancelled) return;
            yield reply.msg;
          }
        } finally {
          // a consumer that stops early: let a read ahead finish before the descriptor is let go
          if (next) await next.catch(() => {});
        }
      } finally {
        await ra.close();
      }
    },

    async status(req, ctx) {
      const ns = ctx.namespace();
      try {
        return { status: statusToProto(await store.status(ns, req.ref)) };
      } catch (err) {
        if (err instanceof BerthError)
          throw wrap(err, `could not get status for ref ${JSON.stringify(req.ref)}`);
        throw err;
      }
    },

    async listStatuses(req, ctx) {
      const ns = ctx.namespace();
      return { statuses: (await store.listStatuses(ns, req.filters)).map(statusToProto) };
    },

    async *write(reqs, ctx) {
      const ns = ctx.namespace();
      const it = reqs[Symbol.asyncIterator]();
      let r = await nextOrCancel(it, ctx.signal);
      if (r.done) return;
      let req = r.value;
      const ref = req.ref;
      if (!ref) throw errorf("invalid argument", "first message must have a reference");
      let total = Number(req.total);
      let expected = req.expected;

      // holds the ref's lock until the stream ends
      const wr = await store.writer(ns, ref, { total, expected, lease: ctx.lease() });
      try {
        // containerd keeps one response and updates it, so fields from a STAT stay set
        const msg: MessageInitShape<typeof WriteContentResponseSchema> = {};
        while (true) {
          const ws = wr.status();
          msg.action = req.action;
          msg.offset = BigInt(ws.offset);

          if (req.expected) {
            expected = req.expected;
            // held by the request's lease, as when the writer was opened for it
            if (store.hold(ns, expected, ctx.lease())) {
              await wr.close();
              await store.abort(ns, ref).catch(() => {});
              throw errorf("already exists", `blob with expected digest ${expected} exists`);
            }
          }
          // the total may be announced late, typically with the commit
          if (req.total > 0n) total = Number(req.total);

          if (req.action === WriteAction.STAT) {
            msg.digest = wr.digest();
            msg.startedAt = timestampFromDate(ws.startedAt);
            msg.updatedAt = timestampFromDate(ws.updatedAt);
            msg.total = BigInt(total);
          } else if (req.action === WriteAction.WRITE || req.action === WriteAction.COMMIT) {
            const at = Number(req.offset);
            if (at > 0 && at !== ws.offset)
              throw errorf("out of range", `write @${at} must occur at current offset ${ws.offset}`);
            if (at === 0 && ws.offset > 0) {
              await wr.truncate(0);
              msg.offset = 0n;
            }
            if (req.data.length > 0) {
              const n = await wr.write(req.data);
              if (n !== req.data.length) throw errorf("data loss", `wrote ${n} of ${req.data.length} bytes`);
              msg.offset = (msg.offset ?? 0n) + BigInt(n);
            }
            if (req.action === WriteAction.COMMIT) await wr.commit(total, expected, req.labels);
            msg.digest = wr.digest();
          }

          yield { ...msg };
          if (req.action === WriteAction.COMMIT) return;

          r = await nextOrCancel(it, ctx.signal);
          if (r.done) return;
          req = r.value;
        }
      } finally {
        await wr.close();
      }
    },

    async abort(req, ctx) {
      const ns = ctx.namespace();
      await store.abort(ns, req.ref, ctx.lease());
      return {};
    },
  };
}
