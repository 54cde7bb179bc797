// Push to a registry (OCI distribution spec): a blob is skipped when the registry has it, mounted
// from another repository when asked, else uploaded (POST a session, PATCH the bytes, PUT with
// ?digest=); manifests and indexes are PUT by tag or digest and their digest checked.

import type { Descriptor } from "../images/media.js";
import { formatReference, type Reference } from "../reference.js";
import { repositoryScope } from "./auth.js";
import type { RegistryHost } from "./hosts.js";
import { type Body, errorDetail, header, RegistryError, type Transport } from "./transport.js";

export type BlobPushResult = "exists" | "mounted" | "uploaded";

function pushHost(hosts: RegistryHost[], ref: Reference): RegistryHost {
  const h = hosts.find((x) => x.capabilities.includes("push"));
  if (!h)
    throw new RegistryError(
      "failed precondition",
      `push ${formatReference(ref)}: no host configured for ${ref.domain} has the push capability`,
    );
  return h;
}

async function expect(
  res: Awaited<ReturnType<Transport["send"]>>,
  want: number[],
  what: string,
  host: RegistryHost,
): Promise<void> {
  if (want.includes(res.status)) return;
  const detail = await errorDetail(res);
  const kind = res.status === 404 ? "not found" : res.status === 403 ? "permission denied" : "unavailable";
  throw new RegistryError(kind, `${what}: ${host.host} answered HTTP ${res.status}: ${detail}`, res.status);
}

export async function pushBlob(
  t: Transport,
  hosts: RegistryHost[],
  ref: Reference,
  desc: Descriptor,
  body: Body,
  opts: { mountFrom?: string } = {},
): Promise<BlobPushResult> {
  const host = pushHost(hosts, ref);
  const scopes = [repositoryScope(ref.path, true)];
  if (opts.mountFrom) scopes.push(repositoryScope(opts.mountFrom));
  const what = `push ${desc.digest} to ${formatReference(ref)}`;
  const head = await t.send({ method: "HEAD", path: `/${ref.path}/blobs/${desc.digest}`, host, scopes });
  await head.body.dump();
  if (head.status === 200) return "exists";
  let post = opts.mountFrom
    ? await t.send({
        method: "POST",
        path: `/${ref.path}/blobs/uploads/?mount=${encodeURIComponent(desc.digest)}&from=${encodeURIComponent(opts.mountFrom)}`,
        host,
        scopes,
        headers: { "content-length": "0" },
      })
    : undefined;
  if (post?.status === 201) {
    await post.body.dump();
    return "mounted";
  }
  if (post?.status !== 202) {
    if (post) await post.body.dump();
    post = await t.send({
      method: "POST",
      path: `/${ref.path}/blobs/uploads/`,
      host,
      scopes,
      headers: { "content-length": "0" },
    });
  }
  await expect(post, [202], `${what}: start upload`, host);
  await post.body.dump();
  let location = header(post.headers, "location");
  if (!location) throw new RegistryError("unavailable", `${what}: ${host.host} gave no upload location`);
  location = new URL(location, post.url).href;
  const patch = await t.send({
    method: "PATCH",
    path: location,
    host,
    scopes,
    body,
    retries: 0,
    headers: { "content-type": "application/octet-stream", "content-length": String(desc.size) },
  });
  await expect(patch, [202, 204], `${what}: upload`, host);
  await patch.body.dump();
  const next = new URL(header(patch.headers, "location") ?? location, patch.url);
  next.searchParams.set("digest", desc.digest);
  const put = await t.send({
    method: "PUT",
    path: next.href,
    host,
    scopes,
    body: Buffer.alloc(0),
    retries: 0,
    headers: { "content-type": "application/octet-stream", "content-length": "0" },
  });
  await expect(put, [201, 204], `${what}: finish upload`, host);
  await put.body.dump();
  const got = header(put.headers, "docker-content-digest");
  if (got && got !== desc.digest)
    throw new RegistryError("data loss", `${what}: ${host.host} stored it as ${got}`);
  return "uploaded";
}

/** PUT a manifest or index; `object` is the tag or digest to store it under (default: ref's). */
export async function pushManifest(
  t: Transport,
  hosts: RegistryHost[],
  ref: Reference,
  desc: Descriptor,
  data: Buffer,
  object?: string,
): Promise<void> {
  const host = pushHost(hosts, ref);
  const target = object ?? ref.tag ?? ref.digest ?? desc.digest;
  const what = `push manifest ${desc.digest} to ${ref.name}:${target}`;
  if (data.length !== desc.size)
    throw new RegistryError(
      "invalid argument",
      `${what}: data is ${data.length} bytes, descriptor says ${desc.size}`,
    );
  const res = await t.send({
    method: "PUT",
    path: `/${ref.path}/manifests/${target}`,
    host,
    scopes: [repositoryScope(ref.path, true)],
    body: data,
    headers: { "content-type": desc.mediaType },
  });
  await expect(res, [200, 201, 204], what, host);
  await res.body.dump();
  const got = header(res.headers, "docker-content-digest");
  if (got && got !== desc.digest)
    throw new RegistryError("data loss", `${what}: ${host.host} stored it as ${got}`);
}
