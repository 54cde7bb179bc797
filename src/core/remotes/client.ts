// The registry client the pull/push pipelines and the transfer service use: host configuration
// looked up afresh for every operation, one transport (connection pools, auth state, token cache)
// for the client's life.
import type { Readable } from "node:stream";
import type { Descriptor } from "../images/media.js";
import { parseNormalized, type Reference } from "../reference.js";
import type { CredentialsFn } from "./auth.js";
import { type FetchOptions, fetchBlob, fetchBytes } from "./fetcher.js";
import { type HostsOptions, type RegistryHost, resolveHosts } from "./hosts.js";
import { type BlobPushResult, pushBlob, pushManifest } from "./pusher.js";
import { type Resolved, type ResolveOptions, resolve } from "./resolver.js";
import { type Body, Transport, type TransportOptions } from "./transport.js";

export interface RegistryClientOptions extends TransportOptions {
  hosts?: HostsOptions;
  /** Per-host credentials (from `--user`, the CRI auth config, a credential helper). */
  credentials?: CredentialsFn;
  fetch?: FetchOptions;
}

const toRef = (r: string | Reference) => (typeof r === "string" ? parseNormalized(r) : r);

export class RegistryClient {
  readonly transport: Transport;

  constructor(private readonly opts: RegistryClientOptions = {}) {
    this.transport = new Transport(opts);
  }

  /** The hosts that would be tried for a registry name, in order (config read now). */
  hosts(domain: string): Promise<RegistryHost[]> {
    return resolveHosts(domain, this.opts.hosts);
  }

  /** Manifests a resolve with `withBody` got, by digest, until fetchBytes takes them (once). */
  private readonly resolvedBytes = new Map<string, Buffer>();

  async resolve(ref: string | Reference, opts: ResolveOptions = {}): Promise<Resolved> {
    const r = toRef(ref);
    const resolved = await resolve(this.transport, await this.hosts(r.domain), r, opts);
    if (resolved.data) {
      // a pull that found the manifest in its store never takes them: keep only the latest few
      if (this.resolvedBytes.size >= 8) this.resolvedBytes.delete(this.resolvedBytes.keys().next().value!);
      this.resolvedBytes.set(resolved.descriptor.digest, resolved.data);
    }
    return resolved;
  }

  /**
   * A verified stream of `desc`'s bytes (errors instead of ending on a wrong digest or size);
   * `opts` adjusts this call's fetch options (e.g. verifyDigest: false for a verifying writer).
   */
  async fetch(ref: string | Reference, desc: Descriptor, opts?: FetchOptions): Promise<Readable> {
    const r = toRef(ref);
    return fetchBlob(this.transport, await this.hosts(r.domain), r, desc, { ...this.opts.fetch, ...opts });
  }

  async fetchBytes(ref: string | Reference, desc: Descriptor): Promise<Buffer> {
    const got = this.resolvedBytes.get(desc.digest);
    if (got && got.length === desc.size) {
      this.resolvedBytes.delete(desc.digest);
      return got;
    }
    const r = toRef(ref);
    return fetchBytes(this.transport, await this.hosts(r.domain), r, desc, this.opts.fetch);
  }

  async pushBlob(
    ref: string | Reference,
    desc: Descriptor,
    body: Body,
    opts: { mountFrom?: string } = {},
  ): Promise<BlobPushResult> {
    const r = toRef(ref);
    return pushBlob(this.transport, await this.hosts(r.domain), r, desc, body, opts);
  }

  async pushManifest(
    ref: string | Reference,
    desc: Descriptor,
    data: Buffer,
    object?: string,
  ): Promise<void> {
    const r = toRef(ref);
    return pushManifest(this.transport, await this.hosts(r.domain), r, desc, data, object);
  }

  close(): Promise<void> {
    return this.transport.close();
  }
}

/** Parse ctr's `--user user[:password]` into a credentials callback for one registry (or all). */
export function userCredentials(user: string, onlyHost?: string): CredentialsFn {
  const i = user.indexOf(":");
  const username = i === -1 ? user : user.slice(0, i);
  const password = i === -1 ? "" : user.slice(i + 1);
  return (host) => (onlyHost === undefined || onlyHost === host ? { username, password } : undefined);
}
