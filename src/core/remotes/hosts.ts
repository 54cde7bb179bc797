// Which endpoints to try for a registry, in order, and how to talk to each: containerd's
// `certs.d/<host>/hosts.toml` layout (with the Docker certificate-file fallback) and the legacy CRI
// `registry.mirrors` / `registry.configs` tables. Files are read on every lookup (cached by mtime),
// so an edit applies to the next pull without a restart.
import { readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { parse as parseToml } from "smol-toml";
import { errInvalidArgument } from "../../base/errdefs.js";
import { defaultRegistryHost, isLocalhost } from "../reference.js";

export type Capability = "pull" | "resolve" | "push";
export const ALL_CAPABILITIES: readonly Capability[] = ["pull", "resolve", "push"];

export interface TlsOptions {
  /** Skip certificate chain and host name verification. */
  skipVerify?: boolean;
  /** CA bundle files added to the system roots. */
  caFiles: string[];
  /** Client certificate and key files; an empty key means the key is in the certificate file. */
  clientPairs: [cert: string, key: string][];
}

export interface RegistryHost {
  scheme: "http" | "https";
  /** `host[:port]` to connect to. */
  host: string;
  /** API root path, `/v2` unless override_path says otherwise. */
  path: string;
  capabilities: Capability[];
  tls: TlsOptions;
  /** Extra headers sent with every request to this host. */
  headers: Record<string, string[]>;
}

export interface Credentials {
  username?: string;
  password?: string;
  /** An OAuth2 refresh token (Docker's identity token), used instead of username/password. */
  identityToken?: string;
}

/** CRI's legacy `[plugins."io.containerd.grpc.v1.cri".registry]` tables (the parts used here). */
export interface LegacyRegistryConfig {
  mirrors?: Record<string, { endpoint?: string[] }>;
  configs?: Record<
    string,
    {
      auth?: { username?: string; password?: string; auth?: string; identitytoken?: string };
      tls?: { insecure_skip_verify?: boolean; ca_file?: string; cert_file?: string; key_file?: string };
    }
  >;
}

export interface HostsOptions {
  /** Roots to search for `<host>/hosts.toml`, first match wins (CRI's config_path, ctr's --hosts-dir). */
  configPaths?: string[];
  /** Used only when no configPaths are given, as containerd's CRI plugin does. */
  legacy?: LegacyRegistryConfig;
  /** Default scheme for hosts without configuration: `http` is ctr's --plain-http. */
  plainHttp?: boolean;
  /** Applied to every host without its own TLS settings (ctr --skip-verify / --tlscacert). */
  defaultTls?: Partial<TlsOptions>;
  /**
   * Headers for every host, over those hosts.toml gives (lower-case names): CRI's
   * `registry.headers`, a transfer request's resolver headers.
   */
  headers?: Record<string, string[]>;
}

const hostDirectory = (host: string): string => {
  const i = host.lastIndexOf(":");
  return i > 0 ? `${host.slice(0, i)}_${host.slice(i + 1)}_` : host;
};

/** Directories consulted for a host under one root, in containerd's order. */
export function hostDirCandidates(root: string, host: string): string[] {
  const out: string[] = [];
  const alt = hostDirectory(host);
  if (alt !== host) out.push(path.join(root, alt));
  out.push(path.join(root, host), path.join(root, "_default"));
  return out;
}

const absFrom = (base: string, p: string) => (path.isAbsolute(p) ? p : path.join(base, p));

interface PartialHost {
  scheme?: "http" | "https";
  host?: string;
  path?: string;
  capabilities: Capability[];
  tls: TlsOptions;
  hasTls: boolean;
  headers: Record<string, string[]>;
}

function bad(file: string, what: string) {
  return errInvalidArgument(`${file}: ${what}`);
}

function stringList(file: string, key: string, v: unknown): string[] {
  if (typeof v === "string") return [v];
  if (Array.isArray(v) && v.every((x) => typeof x === "string")) return v as string[];
  throw bad(file, `${key} must be a string or a list of strings`);
}

function parseServer(file: string, server: string, overridePath: boolean) {
  const withScheme = /^https?:\/\//.test(server) ? server : `https://${server}`;
  let u: URL;
  try {
    u = new URL(withScheme);
  } catch {
    throw bad(file, `cannot parse server ${JSON.stringify(server)}`);
  }
  let p = u.pathname === "/" ? "" : path.posix.normalize(u.pathname).replace(/\/$/, "");
  if (!overridePath && !p.endsWith("/v2")) p += "/v2";
  return { scheme: u.protocol === "http:" ? ("http" as const) : ("https" as const), host: u.host, path: p };
}

function parseHostTable(file: string, base: string, server: string, t: Record<string, unknown>): PartialHost {
  const h: PartialHost = {
    capabilities: [...ALL_CAPABILITIES],
    tls: { caFiles: [], clientPairs: [] },
    hasTls: false,
    headers: {},
  };
  if (server !== "") Object.assign(h, parseServer(file, server, t.override_path === true));
  if (t.capabilities !== undefined) {
    const caps = stringList(file, "capabilities", t.capabilities).map((c) => c.toLowerCase());
    for (const c of caps)
      if (!ALL_CAPABILITIES.includes(c as Capability))
        throw bad(file, `unknown capability ${JSON.stringify(c)} (want pull, resolve or push)`);
    if (caps.length > 0) h.capabilities = ALL_CAPABILITIES.filter((c) => caps.includes(c));
  }
  if (t.skip_verify !== undefined) {
    if (typeof t.skip_verify !== "boolean") throw bad(file, "skip_verify must be true or false");
    h.tls.skipVerify = t.skip_verify;
    h.hasTls = true;
  }
  if (t.ca !== undefined) {
    h.tls.caFiles = stringList(file, "ca", t.ca).map((p) => absFrom(base, p));
    h.hasTls = true;
  }
  if (t.client !== undefined) {
    const items = typeof t.client === "string" ? [t.client] : t.client;
    if (!Array.isArray(items)) throw bad(file, "client must be a path, a list of paths or a list of pairs");
    for (const it of items) {
      if (typeof it === "string") h.tls.clientPairs.push([absFrom(base, it), ""]);
      else if (Array.isArray(it) && it.length === 2 && it.every((x) => typeof x === "string"))
        h.tls.clientPairs.push([absFrom(base, it[0] as string), it[1] ? absFrom(base, it[1] as string) : ""]);
      else throw bad(file, "client pairs must be [cert, key] paths");
    }
    h.hasTls = true;
  }
  if (t.header !== undefined) {
    if (typeof t.header !== "object" || t.header === null || Array.isArray(t.header))
      throw bad(file, "header must be a table");
    for (const [k, v] of Object.entries(t.header)) h.headers[k] = stringList(file, `header ${k}`, v);
  }
  return h;
}

/** Parse one hosts.toml. The last entry stands for `server` (host unset when there is none). */
export function parseHostsToml(file: string, text: string): PartialHost[] {
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    throw bad(file, `cannot parse TOML: ${(err as Error).message}`);
  }
  const base = path.dirname(file);
  const out: PartialHost[] = [];
  const hosts = doc.host;
  if (hosts !== undefined) {
    if (typeof hosts !== "object" || hosts === null) throw bad(file, "host must be a table");
    // smol-toml keeps the document's key order, which is the order mirrors are tried in.
    for (const [name, t] of Object.entries(hosts as Record<string, unknown>)) {
      if (typeof t !== "object" || t === null)
        throw bad(file, `host ${JSON.stringify(name)} must be a table`);
      out.push(parseHostTable(file, base, name, t as Record<string, unknown>));
    }
  }
  const server = doc.server;
  if (server !== undefined && typeof server !== "string") throw bad(file, "server must be a string");
  out.push(parseHostTable(file, base, server ?? "", doc));
  return out;
}

/** Docker's certs.d layout: `*.crt` CAs, `*.cert` client certificates with a matching `*.key`. */
async function loadCertFiles(dir: string): Promise<PartialHost[]> {
  const h: PartialHost = {
    capabilities: [...ALL_CAPABILITIES],
    tls: { caFiles: [], clientPairs: [] },
    hasTls: false,
    headers: {},
  };
  let names: string[] = [];
  try {
    names = (await readdir(dir, { withFileTypes: true })).filter((e) => !e.isDirectory()).map((e) => e.name);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  for (const n of names.sort()) {
    if (n.endsWith(".crt")) h.tls.caFiles.push(path.join(dir, n));
    if (n.endsWith(".cert")) {
      const key = path.join(dir, `${n.slice(0, -5)}.key`);
      h.tls.clientPairs.push([path.join(dir, n), names.includes(path.basename(key)) ? key : ""]);
    }
  }
  h.hasTls = h.tls.caFiles.length > 0 || h.tls.clientPairs.length > 0;
  return [h];
}

const fileCache = new Map<string, { mtimeMs: number; size: number; hosts: PartialHost[] }>();

async function loadHostDir(dir: string): Promise<PartialHost[]> {
  const file = path.join(dir, "hosts.toml");
  let st: { size: number; mtimeMs: number } | undefined;
  try {
    st = await stat(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  if (!st || st.size === 0) return loadCertFiles(dir);
  const hit = fileCache.get(file);
  if (hit && hit.mtimeMs === st.mtimeMs && hit.size === st.size) return hit.hosts;
  const hosts = parseHostsToml(file, await readFile(file, "utf8"));
  fileCache.set(file, { mtimeMs: st.mtimeMs, size: st.size, hosts });
  return hosts;
}

async function findHostDir(roots: string[], host: string): Promise<string | undefined> {
  for (const root of roots) {
    for (const dir of hostDirCandidates(root, host)) {
      try {
        if ((await stat(dir)).isDirectory()) return dir;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      }
    }
  }
  return undefined;
}

function mergeDefaultTls(h: PartialHost, d: Partial<TlsOptions> | undefined): TlsOptions {
  if (h.hasTls || !d) return h.tls;
  return {
    ...(d.skipVerify !== undefined ? { skipVerify: d.skipVerify } : {}),
    caFiles: d.caFiles ?? [],
    clientPairs: d.clientPairs ?? [],
  };
}

/** Fill in the upstream entry the way containerd does for a host without a `server`. */
function finish(domain: string, parts: PartialHost[], opts: HostsOptions): RegistryHost[] {
  const out: RegistryHost[] = [];
  for (const p of parts) {
    let { scheme, host } = p;
    let hostPath = p.path;
    const tls = mergeDefaultTls(p, opts.defaultTls);
    if (host === undefined) {
      host = defaultRegistryHost(domain);
      hostPath = "/v2";
      if (domain === "docker.io") scheme = "https";
      else if (opts.plainHttp || isLocalhost(domain)) scheme = "http";
      else scheme = "https";
    }
    out.push({
      scheme: scheme ?? "https",
      host,
      path: hostPath ?? "/v2",
      capabilities: p.capabilities,
      tls,
      headers: p.headers,
    });
  }
  return out;
}

function legacyHosts(domain: string, opts: HostsOptions): RegistryHost[] {
  const legacy = opts.legacy ?? {};
  const mirrors = legacy.mirrors ?? {};
  const endpoints = [...(mirrors[domain]?.endpoint ?? mirrors["*"]?.endpoint ?? [])];
  const upstream = defaultRegistryHost(domain);
  const schemeFor = (h: string) => (opts.plainHttp || isLocalhost(h) ? "http" : "https");
  const urls = endpoints.map((e) => {
    const withScheme = e.includes("://") ? e : `${schemeFor(new URL(`x://${e}`).host)}://${e}`;
    try {
      return new URL(withScheme);
    } catch {
      throw errInvalidArgument(`registry mirror endpoint ${JSON.stringify(e)} for ${domain} is not a URL`);
    }
  });
  if (!urls.some((u) => u.host === domain)) urls.push(new URL(`${schemeFor(upstream)}://${upstream}`));
  return urls.map((u) => {
    const cfg = legacy.configs?.[u.host];
    const tls: TlsOptions = cfg?.tls
      ? {
          ...(cfg.tls.insecure_skip_verify !== undefined ? { skipVerify: cfg.tls.insecure_skip_verify } : {}),
          caFiles: cfg.tls.ca_file ? [cfg.tls.ca_file] : [],
          clientPairs: cfg.tls.cert_file ? [[cfg.tls.cert_file, cfg.tls.key_file ?? ""]] : [],
        }
      : {
          ...(opts.defaultTls?.skipVerify !== undefined ? { skipVerify: opts.defaultTls.skipVerify } : {}),
          caFiles: opts.defaultTls?.caFiles ?? [],
          clientPairs: opts.defaultTls?.clientPairs ?? [],
        };
    const p = u.pathname === "/" || u.pathname === "" ? "/v2" : u.pathname.replace(/\/$/, "");
    return {
      scheme: u.protocol === "http:" ? "http" : "https",
      host: u.host,
      path: p,
      capabilities: ["pull", "resolve"],
      tls,
      headers: {},
    };
  });
}

/**
 * The hosts to try for a registry name (`docker.io`, `127.0.0.1:5000`): mirrors first in the order
 * written, then the upstream (or `server`). An empty list means the configuration allows none.
 */
export async function resolveHosts(domain: string, opts: HostsOptions = {}): Promise<RegistryHost[]> {
  const hosts = await configuredHosts(domain, opts);
  const extra = opts.headers ?? {};
  if (Object.keys(extra).length === 0) return hosts;
  return hosts.map((h) => ({ ...h, headers: { ...h.headers, ...extra } }));
}

async function configuredHosts(domain: string, opts: HostsOptions): Promise<RegistryHost[]> {
  const roots = (opts.configPaths ?? []).filter((p) => p !== "");
  if (roots.length === 0) {
    if (opts.legacy?.mirrors || opts.legacy?.configs) return legacyHosts(domain, opts);
    return finish(
      domain,
      [
        {
          capabilities: [...ALL_CAPABILITIES],
          tls: { caFiles: [], clientPairs: [] },
          hasTls: false,
          headers: {},
        },
      ],
      opts,
    );
  }
  const dir = await findHostDir(roots, domain);
  const parts = dir
    ? await loadHostDir(dir)
    : [
        {
          capabilities: [...ALL_CAPABILITIES],
          tls: { caFiles: [], clientPairs: [] },
          hasTls: false,
          headers: {},
        },
      ];
  return finish(domain, parts, opts);
}

/** Credentials for a registry host from the legacy CRI `registry.configs."host".auth` table. */
export function legacyCredentials(
  legacy: LegacyRegistryConfig | undefined,
  host: string,
): Credentials | undefined {
  const a = legacy?.configs?.[host]?.auth;
  if (!a) return undefined;
  if (a.username) return { username: a.username, password: a.password ?? "" };
  if (a.identitytoken) return { identityToken: a.identitytoken };
  if (a.auth) {
    const dec = Buffer.from(a.auth, "base64").toString("utf8");
    const i = dec.indexOf(":");
    if (i === -1)
      throw errInvalidArgument(
        `registry.configs.${JSON.stringify(host)}.auth.auth is not base64 of user:password`,
      );
    return { username: dec.slice(0, i), password: dec.slice(i + 1).replace(/\0+$/, "") };
  }
  return undefined;
}
