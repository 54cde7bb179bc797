// The CRI ImageService over berthd's image store, content store and snapshotters, in the k8s.io
// namespace.
//
// One CRI image is every image record whose target resolves (for this host's platform) to the
// same image config: its ID is the config digest. A pull records, as containerd's CRI does, the
// reference pulled (`repo:tag`), the repo digest (`repo@sha256:<target digest>`) and the ID
// (`sha256:<config digest>`), all labelled `io.cri-containerd.image=managed`, so ctr and crictl
// list the same images. Images other tools put in the namespace (`ctr -n k8s.io images import`)
// are CRI images too, as with containerd.
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { errInvalidArgument, errNotFound, isNotFound } from "../base/errdefs.js";
import { hostPlatform } from "../base/platforms.js";
import { contentStoreReader } from "../core/images/content.js";
import { platformMatcher, type ResolvedImage, resolvedImage } from "../core/images/image.js";
import type { Image } from "../core/images/store.js";
import { pull } from "../core/pull/pull.js";
import { formatReference, parseNormalized, parseReference, type Reference } from "../core/reference.js";
import { RegistryClient } from "../core/remotes/client.js";
import { criHostsOptions, criRegistrySettings } from "../core/remotes/cri-registry.js";
import type { Credentials } from "../core/remotes/hosts.js";
import type { AuthConfig, ImageSchema } from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import type { CriDeps, CriImage, CriImages, ImageMethods, PullOptions } from "./context.js";

/** The label containerd's CRI puts on the image records it creates. */
export const IMAGE_LABEL = "io.cri-containerd.image";
export const IMAGE_LABEL_MANAGED = "managed";
/** containerd 1.7's label on images kubelet must not garbage-collect (the sandbox image). */
export const PINNED_LABEL = "io.cri-containerd.pinned";
export const PINNED_VALUE = "pinned";

type ImageDeps = Omit<CriDeps, "criImages">;

const ID_RE = /^(?:sha256:)?([0-9a-f]{1,64})$/;
const FULL_ID_RE = /^sha256:[0-9a-f]{64}$/;

/**
 * The user and password (or identity token) a CRI AuthConfig gives for `host`; none when it names
 * another server. (A registry token is a bearer token: doPull sends it as a header.)
 */
export function authCredentials(auth: AuthConfig | undefined, host: string): Credentials | undefined {
  if (!auth) return undefined;
  if (auth.serverAddress !== "" && serverHost(auth.serverAddress) !== host) return undefined;
  if (auth.username !== "") return { username: auth.username, password: auth.password };
  if (auth.identityToken !== "") return { identityToken: auth.identityToken };
  if (auth.auth !== "") {
    const decoded = Buffer.from(auth.auth, "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    if (colon < 0)
      throw errInvalidArgument("invalid decoded auth: the `auth` field is not base64 of user:password");
    // Docker's config files may pad the password with NULs.
    return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1).replace(/\0+$/, "") };
  }
  return undefined;
}

/** The host[:port] of a server address written as a URL or as a bare host. */
function serverHost(addr: string): string {
  try {
    return new URL(addr.includes("://") ? addr : `https://${addr}`).host;
  } catch {
    return addr;
  }
}

/** `repo@digest` for a reference's repository. */
const digestRef = (r: Reference, digest: string) => `${r.name}@${digest}`;

/** Parse a CRI image reference; an invalid one is the caller's error. */
function normalized(ref: string): Reference {
  try {
    return parseNormalized(ref);
  } catch (err) {
    throw errInvalidArgument(
      `failed to parse image reference ${JSON.stringify(ref)}: ${(err as Error).message}`,
    );
  }
}

/** `user`, `uid`, `uid:gid` or `user:group` from an image config: CRI reports the user part. */
export function imageUser(user: string | undefined): { uid?: bigint; username: string } {
  const u = (user ?? "").split(":")[0] ?? "";
  if (u === "") return { username: "" };
  if (/^\d+$/.test(u)) return { uid: BigInt(u), username: "" };
  return { username: u };
}

export function createCriImages(deps: ImageDeps): CriImages {
  const ns = deps.namespace;
  const reader = contentStoreReader(deps.content, ns);
  const platform = hostPlatform();
  const matcher = platformMatcher([platform]);
  const snapshotter = () => deps.config.containerd.snapshotter;
  /** The configured sandbox image, normalised ("" when it does not parse). */
  const sandboxImageName = (): string => {
    try {
      return formatReference(parseNormalized(deps.config.sandbox_image));
    } catch {
      return "";
    }
  };
  // Blobs are immutable: what a target digest resolves to never changes.
  const resolvedCache = new Map<string, Promise<ResolvedImage>>();

  const resolveTarget = (img: Image): Promise<ResolvedImage> => {
    const key = img.target.digest;
    let p = resolvedCache.get(key);
    if (!p) {
      p = resolvedImage(reader, img.target, matcher);
      p.catch(() => resolvedCache.delete(key));
      resolvedCache.set(key, p);
      if (resolvedCache.size > 4096) resolvedCache.delete(resolvedCache.keys().next().value!);
    }
    return p;
  };

  const isUnpacked = async (chainId: string): Promise<boolean> => {
    if (chainId === "") return false;
    try {
      await deps.snapshots.get(snapshotter()).stat(ns, chainId);
      return true;
    } catch {
      return false;
    }
  };

  /** Every record of the namespace grouped by image ID (records that do not resolve are left out). */
  const groups = async (): Promise<Map<string, { r: ResolvedImage; records: Image[] }>> => {
    const records = deps.images.list(ns).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const resolved = await Promise.all(
      records.map((rec) =>
        resolveTarget(rec).catch((err: unknown) => {
          deps.log.debug("CRI: image record does not resolve for this platform", {
            name: rec.name,
            error: (err as Error).message,
          });
          return undefined;
        }),
      ),
    );
    const byId = new Map<string, { r: ResolvedImage; records: Image[] }>();
    records.forEach((rec, i) => {
      const r = resolved[i];
      if (!r) return;
      const id = r.configDesc.digest;
      const e = byId.get(id);
      if (!e) byId.set(id, { r, records: [rec] });
      else {
        e.records.push(rec);
        // The ID record points at the target pulled last, as containerd's CRI keeps it.
        if (rec.name === id) e.r = r;
      }
    });
    return byId;
  };

  const all = async (): Promise<CriImage[]> => {
    const out: CriImage[] = [];
    for (const [id, e] of await groups()) out.push(await toCriImage(id, e.r, e.records));
    return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  };

  const toCriImage = async (id: string, r: ResolvedImage, records: Image[]): Promise<CriImage> => {
    const repoTags: string[] = [];
    const repoDigests: string[] = [];
    for (const rec of records) {
      if (FULL_ID_RE.test(rec.name)) continue;
      let ref: Reference;
      try {
        ref = parseReference(rec.name);
      } catch {
        continue;
      }
      if (ref.digest) repoDigests.push(rec.name);
      else if (ref.tag !== undefined) repoTags.push(rec.name);
    }
    const target = r.target;
    // containerd's size: every blob the image is for this platform (index, manifest, config, layers)
    let size = r.manifestDesc.size + r.configDesc.size;
    for (const l of r.layers) size += l.size;
    if (target.digest !== r.manifestDesc.digest) size += target.size;
    return {
      id,
      repoTags,
      repoDigests,
      target: { ...target, annotations: { ...(target.annotations ?? {}) } },
      manifest: { ...r.manifestDesc, annotations: { ...(r.manifestDesc.annotations ?? {}) } },
      config: r.config,
      chainId: r.topChainId,
      size,
      unpacked: await isUnpacked(r.topChainId),
      records: records.map((x) => x.name),
    };
  };

  const resolve = async (ref: string): Promise<CriImage | undefined> => {
    if (ref === "") throw errInvalidArgument("image reference is empty");
    // A reference first (`busybox` is a name, not an ID prefix), as containerd resolves.
    let name: string | undefined;
    try {
      name = formatReference(parseNormalized(ref));
    } catch {
      name = undefined;
    }
    const byId = await groups();
    const build = (id: string) => {
      const e = byId.get(id)!;
      return toCriImage(id, e.r, e.records);
    };
    if (name !== undefined)
      for (const [id, e] of byId) if (e.records.some((r) => r.name === name)) return build(id);
    const m = ID_RE.exec(ref);
    if (!m) return undefined;
    const hex = m[1]!;
    const hits = [...byId.keys()].filter((id) => id.slice("sha256:".length).startsWith(hex));
    if (hits.length > 1) throw errInvalidArgument(`image ID prefix ${JSON.stringify(ref)} is ambiguous`);
    return hits.length === 1 ? build(hits[0]!) : undefined;
  };

  /** Create or point a record at `target`, with CRI's label. */
  const putRecord = (name: string, target: Image["target"], pinned: boolean) => {
    const labels: Record<string, string> = { [IMAGE_LABEL]: IMAGE_LABEL_MANAGED };
    if (pinned) labels[PINNED_LABEL] = PINNED_VALUE;
    try {
      const cur = deps.images.get(ns, name);
      if (cur.target.digest === target.digest && cur.labels[IMAGE_LABEL] === IMAGE_LABEL_MANAGED) {
        if (!pinned || cur.labels[PINNED_LABEL] === PINNED_VALUE) return;
      }
      deps.images.update(ns, { name, labels: { ...cur.labels, ...labels }, target }, ["labels", "target"]);
    } catch (err) {
      if (!isNotFound(err)) throw err;
      try {
        deps.images.create(ns, { name, labels, target });
      } catch (e) {
        // created by a concurrent pull of the same image: theirs points at the same content
        if ((e as { kind?: string }).kind !== "already exists") throw e;
      }
    }
  };

  const doPull = async (ref: string, opts: PullOptions = {}): Promise<CriImage> => {
    const r = normalized(ref);
    const name = formatReference(r);
    const registry = criRegistrySettings(deps.config.registry);
    const headers: Record<string, string[]> = { ...registry.headers };
    const auth = opts.auth;
    if (auth?.registryToken && (auth.serverAddress === "" || serverHost(auth.serverAddress) === r.domain))
      headers["authorization"] = [`Bearer ${auth.registryToken}`];
    // Validate the request's auth once up front, so a bad `auth` field fails the call plainly.
    authCredentials(auth, r.domain);
    const client = new RegistryClient({
      logger: deps.log,
      hosts: { ...criHostsOptions(registry, false), headers },
      credentials: async (host) => authCredentials(auth, host) ?? registry.credentials(host),
    });
    const started = Date.now();
    let result: Awaited<ReturnType<typeof pull>>;
    try {
      result = await pull(
        {
          content: deps.content,
          snapshots: deps.snapshots,
          differ: deps.diff,
          leases: deps.leases,
          images: deps.images,
          log: deps.log,
        },
        {
          namespace: ns,
          ref: name,
          client,
          name,
          labels: { [IMAGE_LABEL]: IMAGE_LABEL_MANAGED },
          platforms: [platform],
          unpacks: [{ platform, snapshotter: snapshotter() }],
          maxConcurrentDownloads: deps.config.max_concurrent_downloads,
          signal: opts.signal,
        },
      );
    } finally {
      await client.close().catch(() => {});
    }
    const target = { ...result.target, annotations: { ...(result.target.annotations ?? {}) } };
    const resolved = await resolvedImage(reader, target, matcher);
    const id = resolved.configDesc.digest;
    const pinned = name === sandboxImageName();
    putRecord(name, target, pinned);
    if (!r.digest) putRecord(digestRef(r, target.digest), target, pinned);
    putRecord(id, target, pinned);
    deps.log.info("CRI: image pulled", { ref: name, id, ms: Date.now() - started });
    const img = await resolve(id);
    if (!img) throw errNotFound(`image ${JSON.stringify(name)} pulled but not found`);
    return img;
  };

  // Concurrent pulls of one reference (a kubelet pulling for several pods) share one pull.
  const inflight = new Map<string, Promise<CriImage>>();
  const sharedPull = (ref: string, opts?: PullOptions): Promise<CriImage> => {
    const key = `${ref}\0${JSON.stringify(opts?.auth ?? {})}`;
    let p = inflight.get(key);
    if (!p) {
      p = doPull(ref, opts).finally(() => inflight.delete(key));
      inflight.set(key, p);
    }
    return p;
  };

  return {
    resolve,
    pull: sharedPull,
    async ensure(ref, opts) {
      return (await resolve(ref)) ?? sharedPull(ref, opts);
    },
    list: all,
    async remove(img) {
      const names = img.records;
      for (const [i, name] of names.entries()) {
        try {
          // the last deletion waits for the collection, as containerd's does
          await deps.images.delete(ns, name, { sync: i === names.length - 1 });
        } catch (err) {
          if (!isNotFound(err)) throw err;
        }
      }
    },
  };
}

/** An image for the CRI messages. */
function toMessage(img: CriImage, pinned: boolean): MessageInitShape<typeof ImageSchema> {
  const user = imageUser(img.config.config?.User);
  return {
    id: img.id,
    repoTags: img.repoTags,
    repoDigests: img.repoDigests,
    size: BigInt(img.size),
    ...(user.uid !== undefined ? { uid: { value: user.uid } } : {}),
    username: user.username,
    pinned,
  };
}

export function imageMethods(deps: CriDeps, store: CriImages = deps.criImages): ImageMethods {
  const ns = deps.namespace;
  const pinnedOf = (img: CriImage): boolean => {
    try {
      return deps.images.get(ns, img.id).labels[PINNED_LABEL] === PINNED_VALUE;
    } catch {
      return false;
    }
  };
  const msg = (img: CriImage) => toMessage(img, pinnedOf(img));
  const committedUsage = new Map<string, { size: number; inodes: number }>();

  return {
    async listImages(req) {
      const want = req.filter?.image?.image ?? "";
      if (want !== "") {
        const img = await store.resolve(want);
        return { images: img ? [msg(img)] : [] };
      }
      return { images: (await store.list()).map(msg) };
    },

    async imageStatus(req) {
      const ref = req.image?.image ?? "";
      const img = await store.resolve(ref);
      // an image that is not present is a nil image, not an error: kubelet then pulls it
      if (!img) return { info: {} };
      const info: Record<string, string> = {};
      if (req.verbose)
        info["info"] = JSON.stringify({
          chainID: img.chainId,
          imageSpec: img.config,
          manifest: img.manifest,
          target: img.target,
          snapshotter: deps.config.containerd.snapshotter,
          unpacked: img.unpacked,
        });
      return { image: msg(img), info };
    },

    async pullImage(req, ctx) {
      const ref = req.image?.image ?? "";
      if (ref === "") throw errInvalidArgument("image reference is required");
      const img = await store.pull(ref, {
        auth: req.auth,
        sandboxConfig: req.sandboxConfig,
        signal: ctx.signal,
      });
      return { imageRef: img.id };
    },

    async removeImage(req) {
      const ref = req.image?.image ?? "";
      const img = await store.resolve(ref);
      // kubelet removes images it believes present; a missing one is already what it wants
      if (img) await store.remove(img);
      return {};
    },

    async imageFsInfo() {
      const sn = deps.snapshots.get(deps.config.containerd.snapshotter);
      let usedBytes = 0;
      let inodesUsed = 0;
      const seen = new Set<string>();
      for (const info of await sn.list(ns)) {
        const cacheKey = `${info.name}@${info.created.getTime()}`;
        seen.add(cacheKey);
        let u = committedUsage.get(cacheKey);
        if (!u) {
          try {
            u = await sn.usage(ns, info.name);
          } catch {
            continue; // removed meanwhile
          }
          // a committed layer never changes: walk it once
          if (info.kind === "committed") committedUsage.set(cacheKey, u);
        }
        usedBytes += u.size;
        inodesUsed += u.inodes;
      }
      for (const k of committedUsage.keys()) if (!seen.has(k)) committedUsage.delete(k);
      return {
        imageFilesystems: [
          {
            timestamp: BigInt(Date.now()) * 1_000_000n,
            fsId: {
              mountpoint: join(
                deps.daemon.root,
                `io.containerd.snapshotter.v1.${deps.config.containerd.snapshotter}`,
              ),
            },
            usedBytes: { value: BigInt(usedBytes) },
            inodesUsed: { value: BigInt(inodesUsed) },
          },
        ],
      };
    },
  };
}
