// Image references as Docker and containerd read them: `[domain[:port]/]path[:tag][@digest]`,
// normalised to a fully qualified name (`busybox` → `docker.io/library/busybox:latest`) and back to
// the familiar short form. Errors are InvalidArgument and say which part is wrong.
import { errInvalidArgument } from "../base/errdefs.js";

export const DEFAULT_DOMAIN = "docker.io";
export const LEGACY_DEFAULT_DOMAIN = "index.docker.io";
export const OFFICIAL_REPO_PREFIX = "library/";
export const DEFAULT_TAG = "latest";
/** Longest repository name (domain and path) the distribution spec allows. */
export const NAME_MAX_LENGTH = 255;

// The grammar of the distribution reference package, as regular expressions.
const DOMAIN_COMPONENT = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const IPV6 = "\\[(?:[a-fA-F0-9:]+)\\]";
const DOMAIN_NAME = `${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*`;
const HOST = `(?:${DOMAIN_NAME}|${IPV6})`;
const DOMAIN_RE = new RegExp(`^${HOST}(?::[0-9]+)?$`);
const PATH_COMPONENT_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG_RE = /^[\w][\w.-]{0,127}$/;
const DIGEST_RE = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
const HEX_LENGTH: Record<string, number> = { sha256: 64, sha384: 96, sha512: 128 };

const invalid = (ref: string, what: string) =>
  errInvalidArgument(`invalid reference ${JSON.stringify(ref)}: ${what}`);

/** Check an OCI digest (`sha256:<64 lowercase hex>`); returns it or throws InvalidArgument. */
export function validateDigest(d: string, ref = d): string {
  if (!DIGEST_RE.test(d)) throw invalid(ref, `digest ${JSON.stringify(d)} is not <algorithm>:<hex>`);
  const [alg, hex] = d.split(":") as [string, string];
  const want = HEX_LENGTH[alg];
  if (want === undefined) throw invalid(ref, `digest algorithm ${JSON.stringify(alg)} is not supported`);
  if (hex.length !== want || !/^[0-9a-f]+$/.test(hex))
    throw invalid(ref, `${alg} digest must be ${want} lowercase hex characters`);
  return d;
}

export interface Reference {
  /** Registry host as written in the name, normalised: `docker.io`, `127.0.0.1:5000`, `[::1]:5000`. */
  readonly domain: string;
  /** Repository path inside the registry: `library/busybox`. */
  readonly path: string;
  /** `domain/path`. */
  readonly name: string;
  readonly tag?: string;
  readonly digest?: string;
}

/** Split the first path component off as the domain when it looks like one (Docker's rule). */
function splitDomain(name: string): [string, string] {
  const i = name.indexOf("/");
  const first = i === -1 ? "" : name.slice(0, i);
  if (
    i === -1 ||
    (!/[.:]/.test(first) && first !== "localhost" && !first.startsWith("[") && first.toLowerCase() === first)
  ) {
    return [DEFAULT_DOMAIN, name];
  }
  return [first, name.slice(i + 1)];
}

/**
 * Parse a reference as written by a user (`busybox`, `user/app:1`, `host:5000/a/b@sha256:…`) and
 * normalise it. The tag is left unset here; {@link withDefaultTag} adds `latest`.
 */
export function parseReference(s: string): Reference {
  if (s === "") throw invalid(s, "empty reference");
  if (s !== s.trim() || /\s/.test(s)) throw invalid(s, "contains whitespace");
  let rest = s;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at !== -1) {
    digest = validateDigest(rest.slice(at + 1), s);
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  // A colon after the last slash separates the tag (a colon before it is the port).
  const lastSlash = rest.lastIndexOf("/");
  const colon = rest.lastIndexOf(":");
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag))
      throw invalid(
        s,
        `tag ${JSON.stringify(tag)} must be 1 to 128 of [A-Za-z0-9_.-], not starting with "." or "-"`,
      );
  }
  if (rest === "") throw invalid(s, "repository name is empty");
  let [domain, path] = splitDomain(rest);
  if (!DOMAIN_RE.test(domain)) throw invalid(s, `registry host ${JSON.stringify(domain)} is not valid`);
  if (domain === LEGACY_DEFAULT_DOMAIN) domain = DEFAULT_DOMAIN;
  if (path === "") throw invalid(s, "repository path is empty");
  if (path !== path.toLowerCase()) throw invalid(s, "repository name must be lowercase");
  for (const c of path.split("/")) {
    if (!PATH_COMPONENT_RE.test(c))
      throw invalid(
        s,
        `repository path component ${JSON.stringify(c)} must be lowercase letters and digits separated by ".", "_", "__" or "-"`,
      );
  }
  if (domain === DEFAULT_DOMAIN && !path.includes("/")) path = OFFICIAL_REPO_PREFIX + path;
  const name = `${domain}/${path}`;
  if (name.length > NAME_MAX_LENGTH)
    throw invalid(s, `repository name is ${name.length} characters, longer than ${NAME_MAX_LENGTH}`);
  return { domain, path, name, ...(tag !== undefined ? { tag } : {}), ...(digest ? { digest } : {}) };
}

/** Adds `:latest` when the reference has neither tag nor digest (as `ctr pull`/`docker pull` do). */
export function withDefaultTag(r: Reference): Reference {
  return r.tag === undefined && r.digest === undefined ? { ...r, tag: DEFAULT_TAG } : r;
}

/** `parseReference` + `withDefaultTag`: what a pull of `busybox` means. */
export function parseNormalized(s: string): Reference {
  return withDefaultTag(parseReference(s));
}

/** Fully qualified string: `docker.io/library/busybox:latest`, `h:5000/a@sha256:…`. */
export function formatReference(r: Reference): string {
  return r.name + (r.tag !== undefined ? `:${r.tag}` : "") + (r.digest ? `@${r.digest}` : "");
}

/** Docker's short form: `busybox:latest`, `user/app:1`; other registries stay qualified. */
export function familiarString(r: Reference): string {
  let n = r.name;
  if (r.domain === DEFAULT_DOMAIN) {
    n = r.path.startsWith(OFFICIAL_REPO_PREFIX) ? r.path.slice(OFFICIAL_REPO_PREFIX.length) : r.path;
    // `library/a/b` keeps its prefix: only single-component official names are shortened.
    if (n.includes("/") && r.path.startsWith(OFFICIAL_REPO_PREFIX)) n = r.path;
  }
  return n + (r.tag !== undefined ? `:${r.tag}` : "") + (r.digest ? `@${r.digest}` : "");
}

/** The object part containerd keeps after the locator: `tag`, `tag@digest` or `@digest`. */
export function referenceObject(r: Reference): string {
  return (r.tag ?? "") + (r.digest ? `@${r.digest}` : "");
}

/** `docker.io` is served by `registry-1.docker.io`; every other name is its own host. */
export function defaultRegistryHost(domain: string): string {
  return domain === DEFAULT_DOMAIN ? "registry-1.docker.io" : domain;
}

/** Host without port, brackets removed: `[::1]:5000` → `::1`. */
export function hostname(hostport: string): string {
  if (hostport.startsWith("[")) {
    const end = hostport.indexOf("]");
    return end === -1 ? hostport : hostport.slice(1, end);
  }
  const i = hostport.lastIndexOf(":");
  return i === -1 ? hostport : hostport.slice(0, i);
}

/** localhost, 127.0.0.0/8 and ::1 (with or without a port), where plain HTTP is the default. */
export function isLocalhost(hostport: string): boolean {
  const h = hostname(hostport);
  return h === "localhost" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || h === "::1";
}
