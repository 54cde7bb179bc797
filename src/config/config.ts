// containerd's version-2 config.toml, accepted unchanged: load (with imports), check types
// against the built-in defaults, merge, and print (`config default`, `config dump`).
import { readdirSync, readFileSync } from "node:fs";
import { basename, dirname, isAbsolute, join, resolve } from "node:path";
import { parse, stringify, TomlError } from "smol-toml";
import { locateKey } from "./locate.js";

export type Table = Record<string, unknown>;

export interface GrpcConfig {
  address: string;
  tcp_address: string;
  tcp_tls_ca: string;
  tcp_tls_cert: string;
  tcp_tls_key: string;
  uid: number;
  gid: number;
  max_recv_message_size: number;
  max_send_message_size: number;
}

export interface Config {
  version: number;
  root: string;
  state: string;
  temp: string;
  plugin_dir: string;
  disabled_plugins: string[];
  required_plugins: string[];
  oom_score: number;
  imports: string[];
  grpc: GrpcConfig;
  ttrpc: { address: string; uid: number; gid: number };
  debug: { address: string; uid: number; gid: number; level: string; format: string };
  metrics: { address: string; grpc_histogram: boolean };
  cgroup: { path: string };
  timeouts: Record<string, string>;
  /** `<type>.<id>` → that plugin's table (defaults merged with the file's). */
  plugins: Record<string, Table>;
  proxy_plugins: Record<string, Table>;
  stream_processors: Record<string, Table>;
}

export const DEFAULT_ROOT = "/var/lib/berth";
export const DEFAULT_STATE = "/run/berth";
export const DEFAULT_ADDRESS = "/run/berth/berth.sock";
export const DEFAULT_CONFIG_PATH = "/etc/berth/config.toml";
const MAX_MSG = 16 << 20;

export function defaultConfig(plugins: Record<string, Table>): Config {
  return {
    version: 2,
    root: DEFAULT_ROOT,
    state: DEFAULT_STATE,
    temp: "",
    plugin_dir: "",
    disabled_plugins: [],
    required_plugins: [],
    oom_score: 0,
    imports: [],
    grpc: {
      address: DEFAULT_ADDRESS,
      tcp_address: "",
      tcp_tls_ca: "",
      tcp_tls_cert: "",
      tcp_tls_key: "",
      uid: 0,
      gid: 0,
      max_recv_message_size: MAX_MSG,
      max_send_message_size: MAX_MSG,
    },
    ttrpc: { address: "", uid: 0, gid: 0 },
    debug: { address: "", uid: 0, gid: 0, level: "", format: "" },
    metrics: { address: "", grpc_histogram: false },
    cgroup: { path: "" },
    timeouts: {
      "io.containerd.timeout.bolt.open": "0s",
      "io.containerd.timeout.shim.cleanup": "5s",
      "io.containerd.timeout.shim.load": "5s",
      "io.containerd.timeout.shim.shutdown": "3s",
      "io.containerd.timeout.task.state": "2s",
      // berth's own: the bound on each call to a running shim (containerd has none, so a stopped
      // shim holds its callers forever)
      "berth.timeout.shim.call": "30s",
    },
    plugins: structuredClone(plugins),
    proxy_plugins: {},
    stream_processors: {},
  };
}

export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly line: number | undefined,
    readonly key: string | undefined,
    detail: string,
  ) {
    super(`${file}${line ? `:${line}` : ""}: ${key ? `${key}: ` : ""}${detail}`);
    this.name = "ConfigError";
  }
}

export interface LoadResult {
  config: Config;
  warnings: string[];
  files: string[];
}

const isTable = (v: unknown): v is Table =>
  typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);

function kindOf(v: unknown): string {
  if (Array.isArray(v)) return "array";
  if (isTable(v)) return "table";
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "float";
  if (v instanceof Date) return "datetime";
  return typeof v;
}

const keyName = (path: string[]) =>
  path.map((p) => (/^[A-Za-z0-9_-]+$/.test(p) ? p : JSON.stringify(p))).join(".");

// Tables whose keys are free-form names (mirrors, runtimes, timeouts, labels, ...): any key
// is allowed; their values are checked against a sibling entry's shape when one exists.
const FREEFORM = new Set(["timeouts", "proxy_plugins", "stream_processors", "plugins"]);
// Inside plugin sections: tables keyed by names the operator chooses (CRI runtimes, registry
// hosts, a runtime's options, which depend on its type).
const NAMED_MAPS = new Set(["runtimes", "mirrors", "configs", "auths", "headers", "options"]);

/**
 * Check `value` against the shape of `def` (the default). Type mismatches throw; keys the
 * defaults do not know are collected as warnings (containerd ignores them; we say so).
 */
function check(value: unknown, def: unknown, path: string[], ctx: CheckCtx): void {
  if (def === undefined) return;
  const want = kindOf(def);
  const got = kindOf(value);
  const numeric = (k: string) => k === "integer" || k === "float";
  if (
    want !== got &&
    !(want === "float" && got === "integer") &&
    !(numeric(want) && numeric(got) && want === "integer" && Number.isInteger(value))
  ) {
    throw ctx.error(path, `expected ${want}, got ${got} (${JSON.stringify(value)})`);
  }
  if (want === "array") {
    const elem = (def as unknown[])[0];
    if (elem !== undefined)
      for (const [i, v] of (value as unknown[]).entries()) check(v, elem, [...path, String(i)], ctx);
    return;
  }
  if (want !== "table") return;
  const d = def as Table;
  const v = value as Table;
  const defKeys = Object.keys(d);
  const last = path[path.length - 1] ?? "";
  const named = path.length > 1 && NAMED_MAPS.has(last);
  const freeform = defKeys.length === 0 || named || (path.length === 1 && FREEFORM.has(path[0]!));
  for (const [k, sub] of Object.entries(v)) {
    if (k in d) check(sub, d[k], [...path, k], ctx);
    // a runtime the operator adds has the shape of the default one (runc)
    else if (named && last === "runtimes" && defKeys.length > 0)
      check(sub, d[defKeys[0]!], [...path, k], ctx);
    else if (!freeform)
      ctx.warnings.push(`${ctx.file}:${ctx.line([...path, k]) ?? "?"}: unknown key ${keyName([...path, k])}`);
  }
}

interface CheckCtx {
  file: string;
  warnings: string[];
  error(path: string[], detail: string): ConfigError;
  line(path: string[]): number | undefined;
}

/** Deep merge: tables merge key by key, everything else is replaced by `over`. */
export function mergeTables(base: Table, over: Table): Table {
  const out: Table = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isTable(b) && isTable(v) ? mergeTables(b, v) : v;
  }
  return out;
}

/** TOML tables come back with a null prototype; make them ordinary objects. */
function toPlain(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(toPlain);
  if (!isTable(v)) return v;
  const out: Table = {};
  for (const [k, x] of Object.entries(v)) out[k] = toPlain(x);
  return out;
}

function parseFile(file: string): { text: string; doc: Table } {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(file, undefined, undefined, `cannot read config: ${(err as Error).message}`);
  }
  try {
    return { text, doc: toPlain(parse(text)) as Table };
  } catch (err) {
    if (err instanceof TomlError) {
      const first = err.message.split("\n")[0] ?? err.message;
      throw new ConfigError(file, err.line, undefined, `invalid TOML: ${first}`);
    }
    throw err;
  }
}

/** filepath.Glob for the common case: wildcards (* ? [..]) in the last path element. */
export function globFiles(pattern: string): string[] {
  const dir = dirname(pattern);
  if (/[*?[]/.test(dir))
    throw new Error(
      `import pattern ${JSON.stringify(pattern)}: wildcards are supported in the file name only`,
    );
  const re = new RegExp(
    `^${basename(pattern)
      .replace(/[.+^${}()|\\]/g, "\\$&")
      .replace(/\*/g, "[^/]*")
      .replace(/\?/g, "[^/]")}$`,
  );
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((n) => re.test(n))
    .sort()
    .map((n) => join(dir, n));
}

/** Map version-1 plugin keys (bare ids, e.g. "cri") to full `<type>.<id>` keys. */
function upgradeV1Plugins(plugins: Table, known: string[]): Table {
  const out: Table = {};
  for (const [k, v] of Object.entries(plugins)) {
    const full = known.find((key) => key.endsWith(`.${k}`));
    out[full ?? k] = v;
  }
  return out;
}

/**
 * Load `file` (and its imports) over the defaults. `pluginDefaults` maps `<type>.<id>` to
 * each registered plugin's defaults; it is both the schema and the starting point.
 */
export function loadConfig(file: string | undefined, pluginDefaults: Record<string, Table>): LoadResult {
  const defaults = defaultConfig(pluginDefaults);
  const warnings: string[] = [];
  const files: string[] = [];
  let merged: Table = defaults as unknown as Table;
  if (!file) return { config: defaults, warnings, files };

  const seen = new Set<string>();
  const loadOne = (path: string): void => {
    const abs = resolve(path);
    if (seen.has(abs)) return;
    seen.add(abs);
    files.push(abs);
    const { text, doc } = parseFile(abs);
    const version = doc.version ?? 1;
    if (version !== 1 && version !== 2)
      throw new ConfigError(
        abs,
        locateKey(text, ["version"]),
        "version",
        `unsupported config version ${JSON.stringify(version)} (berthd reads containerd's versions 1 and 2)`,
      );
    if (version === 1 && isTable(doc.plugins))
      doc.plugins = upgradeV1Plugins(doc.plugins, Object.keys(pluginDefaults));
    doc.version = 2;
    const ctx: CheckCtx = {
      file: abs,
      warnings,
      line: (p) => locateKey(text, p),
      error: (p, detail) => new ConfigError(abs, locateKey(text, p), keyName(p), detail),
    };
    // Plugin sections are checked against their own plugin's defaults.
    const { plugins, ...top } = doc;
    check(top, { ...defaults, plugins: undefined } as unknown as Table, [], ctx);
    if (plugins !== undefined) {
      if (!isTable(plugins)) throw ctx.error(["plugins"], `expected table, got ${kindOf(plugins)}`);
      for (const [key, section] of Object.entries(plugins)) {
        const def = pluginDefaults[key];
        if (def === undefined) {
          warnings.push(
            `${abs}:${ctx.line(["plugins", key]) ?? "?"}: config for unknown plugin ${JSON.stringify(key)} is ignored`,
          );
          continue;
        }
        check(section, def, ["plugins", key], ctx);
      }
    }
    const own = { ...doc };
    // disabled/required plugin lists accumulate across imports, as in containerd
    for (const listKey of ["disabled_plugins", "required_plugins"] as const) {
      if (Array.isArray(doc[listKey]))
        own[listKey] = [
          ...new Set([...((merged[listKey] as string[]) ?? []), ...(doc[listKey] as string[])]),
        ];
    }
    delete own.imports;
    merged = mergeTables(merged, own);
    for (const pattern of (doc.imports as string[] | undefined) ?? []) {
      const pat = isAbsolute(pattern) ? pattern : resolve(dirname(abs), pattern);
      const matches = pat.includes("*") || pat.includes("?") || pat.includes("[") ? globFiles(pat) : [pat];
      for (const m of matches) loadOne(m);
    }
  };
  loadOne(file);
  merged.imports = files.slice(1);
  return { config: merged as unknown as Config, warnings, files };
}

function sortDeep(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortDeep);
  if (!isTable(v)) return v;
  const out: Table = {};
  for (const k of Object.keys(v).sort()) out[k] = sortDeep(v[k]);
  return out;
}

/** TOML text for a config, keys sorted like containerd's output. */
export function printConfig(cfg: Config): string {
  return `${stringify(sortDeep(cfg) as Table)}\n`;
}
