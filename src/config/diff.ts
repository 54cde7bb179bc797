// What a config reload changes: every leaf key whose value differs between two loaded configs,
// with its dotted TOML path, whether a reload applies it (live-keys.ts), and both values as TOML
// text with credentials masked (the result goes to the log and over the wire).
import { readFileSync } from "node:fs";
import { type Config, ConfigError, type Table } from "./config.js";
import { isLiveKey } from "./live-keys.js";
import { locateKey } from "./locate.js";

export interface ConfigChange {
  /** Dotted TOML path: `plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io".endpoint`. */
  key: string;
  /** The path's segments, unquoted. */
  path: string[];
  live: boolean;
  /** TOML text; "" when unset on that side. */
  oldValue: string;
  newValue: string;
}

const isTable = (v: unknown): v is Table =>
  typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);

/** A path as TOML spells it: bare keys as they are, anything else quoted. */
export function tomlPath(path: readonly string[]): string {
  return path.map((p) => (/^[A-Za-z0-9_-]+$/.test(p) ? p : JSON.stringify(p))).join(".");
}

// Keys derived from others or fixed: a change shows up in the keys it brings.
const NOT_SETTINGS = new Set(["imports", "version"]);

const MASK = '"[redacted]"';
// Registry credentials live under `configs.<host>.auth` and `auths.<url>`; a header carrying a
// token (`headers.Authorization`) is one too.
const SECRET_HEADER = /^(authorization|proxy-authorization|x-registry-auth|cookie)$/i;

/** True when the value at `path` is a credential whose value must never be shown. */
export function isSecretPath(path: readonly string[]): boolean {
  const r = path.indexOf("registry");
  if (r < 0 || path[0] !== "plugins") return false;
  const rest = path.slice(r + 1);
  if (rest[0] === "auths") return rest.length > 1;
  if (rest[0] === "configs" && rest[2] === "auth") return true;
  if (rest[0] === "headers" && rest[1] !== undefined) return SECRET_HEADER.test(rest[1]);
  return false;
}

function render(v: unknown): string {
  if (v === undefined) return "";
  if (typeof v === "string") return JSON.stringify(v);
  if (v instanceof Date) return v.toISOString();
  if (Array.isArray(v)) return `[${v.map(render).join(", ")}]`;
  if (isTable(v))
    return `{${Object.entries(v)
      .map(([k, x]) => `${tomlPath([k])} = ${render(x)}`)
      .join(", ")}}`;
  return String(v);
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function walk(a: unknown, b: unknown, path: string[], out: ConfigChange[]): void {
  // Tables are compared key by key; anything else (arrays included) is one value.
  if ((isTable(a) || a === undefined) && (isTable(b) || b === undefined) && (a ?? b) !== undefined) {
    const ta = (a ?? {}) as Table;
    const tb = (b ?? {}) as Table;
    // an emptied table is still a change (a mirror removed with all its keys)
    const keys = [...new Set([...Object.keys(ta), ...Object.keys(tb)])];
    if (keys.length === 0) return;
    for (const k of keys) {
      if (path.length === 0 && NOT_SETTINGS.has(k)) continue;
      walk(ta[k], tb[k], [...path, k], out);
    }
    return;
  }
  if (same(a, b)) return;
  const key = tomlPath(path);
  const secret = isSecretPath(path);
  out.push({
    key,
    path,
    live: isLiveKey(key),
    oldValue: a === undefined ? "" : secret ? MASK : render(a),
    newValue: b === undefined ? "" : secret ? MASK : render(b),
  });
}

/** Every leaf that differs from `prev` to `next`, in key order of the files. */
export function diffConfigs(prev: Config, next: Config): ConfigChange[] {
  const out: ConfigChange[] = [];
  walk(prev as unknown as Table, next as unknown as Table, [], out);
  return out;
}

/** The changes a reload cannot apply. */
export const needsRestart = (changes: readonly ConfigChange[]) => changes.filter((c) => !c.live);

/**
 * Where `path` is set among the loaded files: imports are merged over the main file, so the
 * last file that sets it wins. Undefined when no file sets it (a default).
 */
export function locateInFiles(
  files: readonly string[],
  path: readonly string[],
): { file: string; line: number } | undefined {
  for (let i = files.length - 1; i >= 0; i--) {
    let text: string;
    try {
      text = readFileSync(files[i]!, "utf8");
    } catch {
      continue;
    }
    const line = locateKey(text, [...path]) ?? locateKey(text, [...path], true);
    if (line !== undefined) return { file: files[i]!, line };
  }
  // not set by any file under that name: the nearest enclosing table a file names
  for (let n = path.length - 1; n > 1; n--) {
    const hit = locateInFiles(files, path.slice(0, n));
    if (hit) return hit;
  }
  return undefined;
}

/** A value that loads (right type) but that the part reading it refuses. */
export class ConfigKeyError extends Error {
  constructor(
    readonly path: string[],
    message: string,
  ) {
    super(message);
    this.name = "ConfigKeyError";
  }
}

/** A ConfigKeyError as a ConfigError naming the file and line that set the key. */
export function keyError(files: readonly string[], err: ConfigKeyError): ConfigError {
  const at = locateInFiles(files, err.path);
  return new ConfigError(at?.file ?? files[0] ?? "config", at?.line, tomlPath(err.path), err.message);
}
