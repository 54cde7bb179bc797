// Generates docs/configuration.md, the configuration reference, from the code: the top-level
// defaults in src/config/config.ts and every registered plugin's defaults (what `berthd config
// default` prints), with each key's type, default, and whether a reload applies it live
// (src/config/live-keys.ts). A unit test fails when the checked-in file differs, so the reference
// cannot drift from the code.
//
//   node dist/scripts/gen-config-docs.js           write docs/configuration.md
//   node dist/scripts/gen-config-docs.js --check   exit 1 if it is out of date
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { DEFAULT_CONFIG_PATH, defaultConfig } from "../src/config/config.js";
import { isLiveKey } from "../src/config/live-keys.js";
import { allPlugins, pluginDefaults } from "../src/plugins/all.js";

type Table = Record<string, unknown>;

const isTable = (v: unknown): v is Table => typeof v === "object" && v !== null && !Array.isArray(v);

/** A TOML key as written in a file: bare when it can be, quoted otherwise. */
const tomlKey = (k: string) => (/^[A-Za-z0-9_-]+$/.test(k) ? k : JSON.stringify(k));

function typeOf(v: unknown): string {
  if (Array.isArray(v)) return v.length > 0 ? `array of ${typeOf(v[0])}` : "array";
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "float";
  if (isTable(v)) return "table";
  return typeof v;
}

function literal(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(literal).join(", ")}]`;
  if (isTable(v)) return "{}";
  return String(v);
}

const cell = (s: string) => s.replace(/\|/g, "\\|");

const CRI = 'plugins."io.containerd.grpc.v1.cri"';
/** A sentence under a section's heading: what the table configures. Sections without one get none. */
const NOTES: Record<string, string> = {
  "":
    "`root` holds persistent data (content, snapshots, the metadata database), `state` runtime data " +
    "(bundles, sockets); each plugin gets `<root>/<type>.<id>`. `oom_score` is berthd's own " +
    "oom_score_adj. `imports` are more files merged over this one (globs allowed in the file name).",
  cgroup:
    "containerd's cgroup for the daemon itself. berth accepts the key and stays in the cgroup it " +
    "was started in (under systemd: the unit's, with `Delegate=yes`).",
  debug:
    "`level`: trace, debug, info (default when empty), warn, error, fatal, panic; `format`: text or json.",
  grpc: "The main socket: containerd's API, the CRI and berth's own services. Mode 0660, owned by uid:gid.",
  metrics: "Prometheus metrics at `http://<address>/v1/metrics` when `address` is set (host:port).",
  timeouts: "containerd's named timeouts, Go durations.",
  ttrpc: "The socket shims publish events to; empty address: `<grpc address>.ttrpc`.",
  'plugins."io.containerd.gc.v1.scheduler"':
    "When garbage collection runs: after `deletion_threshold` deletions or `mutation_threshold` " +
    "changes, no more than `pause_threshold` of the time, `schedule_delay` after a trigger.",
  [CRI]: "The CRI plugin: Kubernetes' runtime and image services, in namespace `k8s.io`.",
  [`${CRI}.cni`]:
    "Pod networking. `bin_dir` may list several directories joined with `:`; `conf_dir` is " +
    "watched, so a config dropped in is used without a restart.",
  [`${CRI}.containerd`]: "The snapshotter and runtime CRI containers use.",
  [`${CRI}.containerd.runtimes.runc`]:
    "The default runtime handler; add `runtimes.<name>` tables for more (pods pick one with " +
    "their RuntimeClass).",
  [`${CRI}.containerd.runtimes.runc.options`]:
    "Options handed to the runc shim; `SystemdCgroup` must match the kubelet's cgroup driver.",
  [`${CRI}.registry`]:
    "`config_path`: directories with `<host>/hosts.toml`. `mirrors`, `configs` (auth, tls) and " +
    "`headers` are the older inline form, keyed by registry host (`*` for every host).",
  'plugins."io.containerd.metadata.v1.bolt"':
    "The metadata store (SQLite in berth; the id is containerd's so its keys carry over).",
  'plugins."io.containerd.snapshotter.v1.overlayfs"': "The default snapshotter.",
  'plugins."io.containerd.transfer.v1.local"':
    "Daemon-side pulls and pushes (`berth images pull`, the Transfer API).",
};

interface Section {
  /** Dotted TOML path of the table ("" for the top level). */
  path: string;
  rows: { key: string; type: string; def: string; live: boolean }[];
}

/** Tables in the order `config default` prints them (keys sorted), each with its own keys. */
function sections(table: Table, path: string, out: Section[]): Section[] {
  const keys = Object.keys(table).sort();
  const here: Section = { path, rows: [] };
  out.push(here);
  for (const k of keys) {
    const v = table[k];
    const full = path ? `${path}.${tomlKey(k)}` : tomlKey(k);
    if (isTable(v) && Object.keys(v).length > 0) continue;
    here.rows.push({ key: tomlKey(k), type: typeOf(v), def: literal(v), live: isLiveKey(full) });
  }
  for (const k of keys) {
    const v = table[k];
    if (isTable(v) && Object.keys(v).length > 0)
      sections(v, path ? `${path}.${tomlKey(k)}` : tomlKey(k), out);
  }
  return out;
}

export function renderConfigDocs(): string {
  const cfg = defaultConfig(pluginDefaults(allPlugins())) as unknown as Table;
  const all = sections(cfg, "", []).filter((s) => s.rows.length > 0);
  const liveCount = all.reduce((n, s) => n + s.rows.filter((r) => r.live).length, 0);
  const lines: string[] = [
    "<!-- Generated by scripts/gen-config-docs.ts from the code; do not edit by hand.",
    "     Regenerate: make build && node dist/scripts/gen-config-docs.js -->",
    "# Configuration reference",
    "",
    `berthd reads containerd's version-2 \`config.toml\` (default \`${DEFAULT_CONFIG_PATH}\`, or`,
    "`--config FILE`); a version-1 file is accepted too. Every key below is optional: what a file",
    "leaves out keeps the default shown. `berthd config default` prints this same default",
    "configuration as TOML, and `berthd --config FILE config dump` the effective one (the file,",
    "its `imports` and the command-line flags merged).",
    "",
    "A key of the wrong type stops berthd with the file, line and key; a key berthd does not know",
    "is ignored with a warning in the log (as containerd ignores it).",
    "",
    "**Live** says whether a reload (`SIGHUP` or `berth config reload`) applies a change to the key",
    "without restarting berthd: *yes* keys are applied, all or nothing; a change to any *restart*",
    "key is reported as needing a restart, by key name, in the log and the reload's answer, and is",
    `not applied until berthd restarts. ${liveCount} keys reload live; tables such as the CRI`,
    "`registry` are live as a whole, including the mirrors, auths and headers you add to them.",
    "",
    'Tables named by you (`registry.mirrors."<host>"`, `containerd.runtimes.<name>`,',
    "`proxy_plugins.<name>`, ...) are empty by default and not listed key by key; a runtime you",
    "add takes the keys of `runtimes.runc`.",
    "",
  ];
  for (const s of all) {
    lines.push(s.path ? `## \`[${s.path}]\`` : "## Top level", "");
    const note = NOTES[s.path];
    if (note) lines.push(note, "");
    lines.push("| Key | Type | Default | Live |", "| --- | --- | --- | --- |");
    for (const r of s.rows)
      lines.push(`| \`${cell(r.key)}\` | ${r.type} | \`${cell(r.def)}\` | ${r.live ? "yes" : "restart"} |`);
    lines.push("");
  }
  return lines.join("\n");
}

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "../..");
export const CONFIG_DOC = join(repoRoot, "docs/configuration.md");

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const text = renderConfigDocs();
  if (process.argv.includes("--check")) {
    let current = "";
    try {
      current = readFileSync(CONFIG_DOC, "utf8");
    } catch {
      // missing: out of date
    }
    if (current !== text) {
      process.stderr.write(
        "docs/configuration.md is out of date: run `make build && node dist/scripts/gen-config-docs.js`\n",
      );
      process.exit(1);
    }
  } else {
    writeFileSync(CONFIG_DOC, text);
    process.stdout.write(`wrote ${CONFIG_DOC}\n`);
  }
}
