// Fetch a blob or manifest by descriptor as a stream that is checked while it flows: the size may
// not be exceeded, a dropped connection resumes with a Range request where it stopped, and the
// stream ends only once the bytes hash to the descriptor's digest — otherwise it errors, so a
// consumer writing into the content store never commits a partial or wrong blob.
import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import type { Descriptor } from "../images/media.js";
import { formatReference, type Reference } from "../reference.js";
import { repositoryScope } from "./auth.js";
import type { RegistryHost } from "./hosts.js";
import { isManifestType, MANIFEST_ACCEPT } from "./media.js";
import { allHostsFailed } from "./resolver.js";
import { errorDetail, type HttpResponse, header, RegistryError, type Transport } from "./transport.js";

export interface FetchOptions {
  /** Resumes after a dropped body, per fetch. Default 3. */
  resumes?: number;
  /** Backoff before a resume (ms). Default 200. */
  backoffMs?: number;
  /**
   * Hash the bytes and fail on a wrong digest (default). A caller that writes them to a content
   * writer which verifies the digest on commit turns it off: one sha256 pass fewer per blob.
   */
  verifyDigest?: boolean;
}

interface Opened {
  res: HttpResponse;
  /** Bytes at the start of the body to drop (the server ignored our Range). */
  skip: number;
}

const SUPPORTED_ALGS = new Set(["sha256", "sha384", "sha512"]);

async function open(
  t: Transport,
  host: RegistryHost,
  ref: Reference,
  desc: Descriptor,
  offset: number,
  retries?: number,
): Promise<Opened> {
  const scopes = [repositoryScope(ref.path)];
  const kinds = isManifestType(desc.mediaType) ? ["manifests", "blobs"] : ["blobs"];
  let last: RegistryError | undefined;
  for (const kind of kinds) {
    const headers: Record<string, string> = {};
    if (kind === "manifests") headers.accept = MANIFEST_ACCEPT;
    if (offset > 0) headers.range = `bytes=${offset}-`;
    const res = await t.send({
      method: "GET",
      path: `/${ref.path}/${kind}/${desc.digest}`,
      host,
      scopes,
      headers,
      retries,
    });
    if (res.status === 200) return { res, skip: offset };
    if (res.status === 206) {
      const cr = header(res.headers, "content-range") ?? "";
      const m = /bytes (\d+)-/.exec(cr);
      if (!m || Number(m[1]) !== offset) {
        await res.body.dump();
        throw new RegistryError(
          "unavailable",
          `${desc.digest} from ${host.host}: asked for bytes from ${offset}, got range ${JSON.stringify(cr)}`,
        );
      }
      return { res, skip: 0 };
    }
    if (res.status === 404) {
      await res.body.dump();
      last = new RegistryError(
        "not found",
        `${desc.digest} (${formatReference(ref)}): not found on ${host.host}`,
        404,
      );
      continue;
    }
    if (res.status === 416 && offset >= desc.size) {
      await res.body.dump();
      throw new RegistryError(
        "data loss",
        `${desc.digest} from ${host.host}: already have ${offset} bytes but it did not verify`,
      );
    }
    throw new RegistryError(
      "unavailable",
      `${desc.digest} from ${host.host}: HTTP ${res.status}: ${await errorDetail(res)}`,
      res.status,
    );
  }
  throw last!;
}

async function* verified(
  t: Transport,
  host: RegistryHost,
  ref: Reference,
  desc: Descriptor,
  first: Opened,
  opts: FetchOptions,
): AsyncGenerator<Buffer> {
  const [alg] = desc.digest.split(":") as [string];
  const hash = opts.verifyDigest === false ? undefined : createHash(alg);
  const maxResumes = opts.resumes ?? 3;
  let cur = first;
  let got = 0;
  let resumes = 0;
  try {
    for (;;) {
      let reason: string;
      try {
        for await (const chunk of cur.res.body as AsyncIterable<Buffer>) {
          let c = chunk;
          if (cur.skip > 0) {
            const drop = Math.min(cur.skip, c.length);
            cur.skip -= drop;
            c = c.subarray(drop);
            if (c.length === 0) continue;
          }
          got += c.length;
          if (got > desc.size)
            throw new RegistryError(
              "data loss",
              `${desc.digest} from ${host.host}: more than the expected ${desc.size} bytes`,
            );
          hash?.update(c);
          yield c;
        }
        if (got === desc.size) break;
        reason = "the body ended early";
      } catch (err) {
        if (err instanceof RegistryError) throw err;
        reason = t.describe(err, "GET", new URL(cur.res.url)).message;
      }
      if (resumes >= maxResumes)
        throw new RegistryError(
          "data loss",
          `${desc.digest} from ${host.host}: truncated at ${got} of ${desc.size} bytes after ${resumes} resumes (${reason})`,
        );
      resumes++;
      cur.res.body.destroy();
      await sleep((opts.backoffMs ?? 200) * 2 ** (resumes - 1));
      // a failed resume is still a truncated blob: say so, with why the resume failed
      cur = await open(t, host, ref, desc, got).catch((err: unknown) => {
        throw new RegistryError(
          err instanceof RegistryError ? err.kind : "unavailable",
          `${desc.digest} from ${host.host}: truncated at ${got} of ${desc.size} bytes (${reason}), and resuming failed: ${(err as Error).message}`,
        );
      });
    }
    const actual = hash ? `${alg}:${hash.digest("hex")}` : desc.digest;
    if (actual !== desc.digest)
      throw new RegistryError(
        "data loss",
        `${desc.digest} from ${host.host}: digest mismatch, the content hashes to ${actual}`,
      );
  } finally {
    if (!cur.res.body.destroyed) cur.res.body.destroy();
  }
}

/** Open a verified stream for `desc` from the first pull-capable host that serves it. */
export async function fetchBlob(
  t: Transport,
  hosts: RegistryHost[],
  ref: Reference,
  desc: Descriptor,
  opts: FetchOptions = {},
): Promise<Readable> {
  const alg = desc.digest.split(":")[0]!;
  if (!SUPPORTED_ALGS.has(alg))
    throw new RegistryError("invalid argument", `${desc.digest}: unsupported digest algorithm ${alg}`);
  const candidates = hosts.filter((h) => h.capabilities.includes("pull"));
  const errors: { host: RegistryHost; err: unknown }[] = [];
  for (const host of candidates) {
    try {
      // as in resolve(): no retries on a host that has a next one to fall back to
      const last = host === candidates[candidates.length - 1];
      const first = await open(t, host, ref, desc, 0, last ? undefined : 0);
      const len = Number(header(first.res.headers, "content-length"));
      if (first.res.status === 200 && Number.isFinite(len) && len !== desc.size) {
        await first.res.body.dump();
        throw new RegistryError(
          "data loss",
          `${desc.digest} from ${host.host}: size ${len} does not match the expected ${desc.size}`,
        );
      }
      const out = Readable.from(verified(t, host, ref, desc, first, opts), { objectMode: false });
      // destroyed before its first read, the generator never runs (nor its clean-up): the
      // response would hold its connection, and a transport's close() would wait on it
      out.once("close", () => {
        const body = first.res.body;
        if (body.destroyed) return;
        body.on("error", () => {}); // undici reports its abort as an error: expected here
        body.destroy();
      });
      return out;
    } catch (err) {
      errors.push({ host, err });
    }
  }
  throw allHostsFailed(`fetch ${desc.digest} (${formatReference(ref)})`, errors);
}

/** Fetch a small object (a manifest, an index, a config) whole. */
export async function fetchBytes(
  t: Transport,
  hosts: RegistryHost[],
  ref: Reference,
  desc: Descriptor,
  opts: FetchOptions = {},
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of await fetchBlob(t, hosts, ref, desc, opts)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}
