// Resolve a reference to its target descriptor (OCI distribution spec): HEAD the manifest with the
// Accept list, fall back to GET when the registry leaves out the digest, type or size, and try the
// next resolve-capable host when one fails.
import { createHash } from "node:crypto";
import { type Descriptor, MediaTypes } from "../images/media.js";
import { formatReference, type Reference, validateDigest } from "../reference.js";
import { repositoryScope } from "./auth.js";
import type { RegistryHost } from "./hosts.js";
import { isSchema1, MANIFEST_ACCEPT } from "./media.js";
import { errorDetail, header, RegistryError, type Transport } from "./transport.js";

export interface Resolved {
  /** The fully qualified reference resolved (`docker.io/library/busybox:latest`). */
  name: string;
  descriptor: Descriptor;
  /** The host that answered. */
  host: RegistryHost;
  /** The manifest's bytes, when it was resolved with a GET (their digest is the descriptor's). */
  data?: Buffer;
}

export interface ResolveOptions {
  /**
   * GET the manifest straight away instead of a HEAD first: a pull fetches it next anyway, so
   * this saves it a round trip to the registry, and the count of GETs (what registries meter)
   * stays the same.
   */
  withBody?: boolean;
}

const contentType = (v: string | undefined) => v?.split(";")[0]?.trim() || undefined;

function schema1Error(ref: Reference, host: RegistryHost): RegistryError {
  return new RegistryError(
    "not implemented",
    `${formatReference(ref)} on ${host.host} is a Docker schema 1 manifest, which is not supported: push the image again with a current client to convert it`,
  );
}

/** Combine the failures of every host tried into one error of the most telling kind. */
export function allHostsFailed(what: string, errors: { host: RegistryHost; err: unknown }[]): RegistryError {
  if (errors.length === 0)
    return new RegistryError("not found", `${what}: no registry host is configured for this operation`);
  if (errors.length === 1 && errors[0]!.err instanceof RegistryError) return errors[0]!.err;
  const first =
    errors.find((e) => !(e.err instanceof RegistryError && e.err.kind === "not found")) ?? errors[0]!;
  const kind = first.err instanceof RegistryError ? first.err.kind : "unavailable";
  const parts = errors.map((e) => `${e.host.host}: ${(e.err as Error).message}`);
  return new RegistryError(kind, `${what}: every host failed (${parts.join("; ")})`);
}

async function resolveOn(
  t: Transport,
  host: RegistryHost,
  ref: Reference,
  retries: number | undefined,
  withBody: boolean,
): Promise<{ descriptor: Descriptor; data?: Buffer }> {
  const object = ref.digest ?? ref.tag ?? "latest";
  const path = `/${ref.path}/manifests/${object}`;
  const scopes = [repositoryScope(ref.path)];
  const headers = { accept: MANIFEST_ACCEPT };
  const notFound = () =>
    new RegistryError("not found", `${formatReference(ref)}: not found on ${host.host}`, 404);

  const head = withBody ? undefined : await t.send({ method: "HEAD", path, host, scopes, headers, retries });
  await head?.body.dump();
  if (head?.status === 404) throw notFound();
  if (head?.status === 200) {
    const mt = contentType(header(head.headers, "content-type"));
    const dgst = header(head.headers, "docker-content-digest");
    const size = Number(header(head.headers, "content-length"));
    if (mt && isSchema1(mt)) throw schema1Error(ref, host);
    if (
      mt &&
      mt !== "application/json" &&
      mt !== "application/octet-stream" &&
      Number.isFinite(size) &&
      size > 0
    ) {
      const digest = ref.digest ?? (dgst ? validateDigest(dgst) : undefined);
      if (digest) {
        if (ref.digest && dgst && dgst !== ref.digest)
          throw new RegistryError(
            "data loss",
            `${formatReference(ref)}: ${host.host} answered digest ${dgst} for ${ref.digest}`,
          );
        return { descriptor: { mediaType: mt, digest, size } };
      }
    }
  }
  // No HEAD asked, or it was refused or left something out: GET the manifest and measure it.
  const get = await t.send({ method: "GET", path, host, scopes, headers, retries });
  if (get.status === 404) {
    await get.body.dump();
    throw notFound();
  }
  if (get.status !== 200)
    throw new RegistryError(
      "unavailable",
      `${formatReference(ref)}: ${host.host} answered HTTP ${get.status}: ${await errorDetail(get)}`,
      get.status,
    );
  const chunks: Buffer[] = [];
  for await (const c of get.body) chunks.push(c as Buffer);
  const data = Buffer.concat(chunks);
  let mt = contentType(header(get.headers, "content-type"));
  if (!mt || mt === "application/json" || mt === "text/plain") {
    try {
      const j = JSON.parse(data.toString("utf8")) as {
        mediaType?: string;
        schemaVersion?: number;
        manifests?: unknown;
        signatures?: unknown;
      };
      if (j.schemaVersion === 1) throw schema1Error(ref, host);
      mt = j.mediaType ?? (j.manifests ? MediaTypes.ociIndex : MediaTypes.ociManifest);
    } catch (err) {
      if (err instanceof RegistryError) throw err;
      throw new RegistryError(
        "invalid argument",
        `${formatReference(ref)} on ${host.host}: manifest is not JSON`,
      );
    }
  }
  if (isSchema1(mt)) throw schema1Error(ref, host);
  const computed = `sha256:${createHash("sha256").update(data).digest("hex")}`;
  const digest = ref.digest ?? computed;
  if (ref.digest?.startsWith("sha256:") && computed !== ref.digest)
    throw new RegistryError(
      "data loss",
      `${formatReference(ref)}: manifest from ${host.host} hashes to ${computed}, not ${ref.digest}`,
    );
  const announced = header(get.headers, "docker-content-digest");
  if (announced?.startsWith("sha256:") && announced !== computed)
    throw new RegistryError(
      "data loss",
      `${formatReference(ref)}: manifest from ${host.host} hashes to ${computed}, but the registry says ${announced}`,
    );
  // the bytes are handed on only when their digest is the descriptor's (sha256 was checked)
  return {
    descriptor: { mediaType: mt, digest, size: data.length },
    data: digest === computed ? data : undefined,
  };
}

/** Resolve on each resolve-capable host in order; the first answer wins. */
export async function resolve(
  t: Transport,
  hosts: RegistryHost[],
  ref: Reference,
  opts: ResolveOptions = {},
): Promise<Resolved> {
  const candidates = hosts.filter((h) => h.capabilities.includes("resolve"));
  const errors: { host: RegistryHost; err: unknown }[] = [];
  for (const host of candidates) {
    try {
      // A mirror that fails is left for the next host at once, as containerd does; only the
      // last host gets the transport's retries (a down mirror cost seconds per request).
      const last = host === candidates[candidates.length - 1];
      const r = await resolveOn(t, host, ref, last ? undefined : 0, opts.withBody === true);
      return { name: formatReference(ref), descriptor: r.descriptor, host, data: r.data };
    } catch (err) {
      // A refusal to handle schema 1 is about the image, not the host: no point asking the next.
      if (err instanceof RegistryError && err.kind === "not implemented") throw err;
      errors.push({ host, err });
    }
  }
  throw allHostsFailed(`resolve ${formatReference(ref)}`, errors);
}
