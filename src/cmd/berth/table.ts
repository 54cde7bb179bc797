// Shared output and argument helpers for the berth CLI: column alignment that looks like ctr's
// (Go text/tabwriter semantics), human sizes and ages, time formats, labels, durations, JSON.

/** Column alignment settings, with the meaning Go's text/tabwriter gives them. */
export interface TabOptions {
  /** Minimal width of a column, padding included. */
  minwidth: number;
  /** Width of a tab stop; used when padding with tabs. */
  tabwidth: number;
  /** Added to the widest cell of a column. */
  padding: number;
  /** " " pads with spaces; "\t" pads with tabs up to the next multiple of tabwidth. */
  padchar: " " | "\t";
}

/** ctr's usual list layout: minwidth 1, tabwidth 8, padding 1, spaces. */
export const SPACES: TabOptions = { minwidth: 1, tabwidth: 8, padding: 1, padchar: " " };
/** ctr's content listings: the same, padded with tabs. */
export const TABS: TabOptions = { minwidth: 1, tabwidth: 8, padding: 1, padchar: "\t" };
/** ctr's plugin listings: minwidth 4, padding 4, spaces. */
export const WIDE: TabOptions = { minwidth: 4, tabwidth: 8, padding: 4, padchar: " " };

const runeCount = (s: string): number => {
  let n = 0;
  for (const _ of s) n++;
  return n;
};

/**
 * Align tab-terminated cells into columns. Each line is split at tabs; every cell followed by a
 * tab belongs to a column, the text after the last tab does not. A column spans the consecutive
 * lines that have a cell in it; a line without any tab ends the current section.
 */
export function alignColumns(text: string, opts: TabOptions): string {
  const lines = text.split("\n");
  let out = "";
  let section: string[][] = [];
  for (let i = 0; i < lines.length; i++) {
    const cells = lines[i]!.split("\t");
    section.push(cells);
    const last = i === lines.length - 1;
    if (last || cells.length === 1) {
      out += formatSection(section, opts, !last);
      section = [];
    }
  }
  return out;
}

function formatSection(lines: string[][], opts: TabOptions, terminated: boolean): string {
  const parts: string[] = [];
  const widths: number[] = [];

  const pad = (textWidth: number, cellWidth: number) => {
    if (opts.padchar === "\t") {
      if (opts.tabwidth === 0) return;
      const rounded = Math.ceil(cellWidth / opts.tabwidth) * opts.tabwidth;
      parts.push("\t".repeat(Math.ceil((rounded - textWidth) / opts.tabwidth)));
    } else {
      parts.push(" ".repeat(Math.max(0, cellWidth - textWidth)));
    }
  };

  const writeLines = (from: number, to: number) => {
    for (let i = from; i < to; i++) {
      const line = lines[i]!;
      for (let j = 0; j < line.length; j++) {
        const cell = line[j]!;
        parts.push(cell);
        if (j < widths.length) pad(runeCount(cell), widths[j]!);
      }
      if (i < lines.length - 1 || terminated) parts.push("\n");
    }
  };

  const format = (from: number, to: number) => {
    const column = widths.length;
    let start = from;
    for (let i = from; i < to; i++) {
      if (column >= lines[i]!.length - 1) continue;
      // Line i opens a block of lines that all have a cell in this column.
      writeLines(start, i);
      start = i;
      let width = opts.minwidth;
      for (; i < to; i++) {
        const line = lines[i]!;
        if (column >= line.length - 1) break;
        width = Math.max(width, runeCount(line[column]!) + opts.padding);
      }
      widths.push(width);
      format(start, i);
      widths.pop();
      start = i;
    }
    writeLines(start, to);
  };

  format(0, lines.length);
  return parts.join("");
}

/** Collects lines like a Go tabwriter and prints them aligned on flush(). */
export class TabWriter {
  private buf: string[] = [];
  constructor(private readonly opts: TabOptions = SPACES) {}

  /** Add one line; cells are joined with tabs (pass "" last for a tab-terminated last column). */
  row(...cells: string[]): this {
    this.buf.push(`${cells.join("\t")}\n`);
    return this;
  }

  /** Add raw text (may contain tabs and newlines). */
  write(text: string): this {
    this.buf.push(text);
    return this;
  }

  toString(): string {
    return alignColumns(this.buf.join(""), this.opts);
  }

  flush(out: NodeJS.WritableStream = process.stdout): void {
    const s = this.toString();
    this.buf = [];
    if (s) out.write(s);
  }
}

const DECIMAL_UNITS = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];

/** A size with decimal units and four significant digits: 0B, 6B, 1.234kB, 12.5MB. */
export function humanSize(bytes: number | bigint): string {
  let size = Number(bytes);
  let unit = 0;
  while (size >= 1000 && unit < DECIMAL_UNITS.length - 1) {
    size /= 1000;
    unit++;
  }
  return `${formatSignificant(size, 4)}${DECIMAL_UNITS[unit]}`;
}

/** Like printf's %.<digits>g for values below 10^digits: rounded, trailing zeros dropped. */
function formatSignificant(n: number, digits: number): string {
  if (n === 0) return "0";
  return String(Number(n.toPrecision(digits)));
}

/** An age in words: "Less than a second", "5 seconds", "About an hour", "3 days", ... */
export function humanDuration(ms: number): string {
  const seconds = Math.trunc(ms / 1000);
  if (seconds < 1) return "Less than a second";
  if (seconds === 1) return "1 second";
  if (seconds < 60) return `${seconds} seconds`;
  const minutes = Math.trunc(ms / 60_000);
  if (minutes === 1) return "About a minute";
  if (minutes < 60) return `${minutes} minutes`;
  const hours = Math.round(ms / 3_600_000);
  if (hours === 1) return "About an hour";
  if (hours < 48) return `${hours} hours`;
  if (hours < 24 * 7 * 2) return `${Math.trunc(hours / 24)} days`;
  if (hours < 24 * 30 * 2) return `${Math.trunc(hours / 24 / 7)} weeks`;
  if (hours < 24 * 365 * 2) return `${Math.trunc(hours / 24 / 30)} months`;
  return `${Math.trunc(Math.trunc(ms / 3_600_000) / 24 / 365)} years`;
}

/** Age of a protobuf timestamp (or Date) relative to now, in words. */
export function humanAge(t: Date | undefined, now = Date.now()): string {
  return humanDuration(t ? now - t.getTime() : 0);
}

const two = (n: number) => String(n).padStart(2, "0");

/** RFC 3339 in local time with seconds precision, as Go's time.RFC3339 prints: Z for UTC. */
export function rfc3339Local(d: Date): string {
  const off = -d.getTimezoneOffset();
  const zone =
    off === 0
      ? "Z"
      : `${off < 0 ? "-" : "+"}${two(Math.trunc(Math.abs(off) / 60))}:${two(Math.abs(off) % 60)}`;
  return (
    `${String(d.getFullYear()).padStart(4, "0")}-${two(d.getMonth() + 1)}-${two(d.getDate())}` +
    `T${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}${zone}`
  );
}

/** UTC time with nanoseconds and trailing zeros trimmed; `sep` " " gives Go's String() layout. */
function utcWithNanos(seconds: bigint, nanos: number, sep: string): string {
  const d = new Date(Number(seconds) * 1000);
  const date = `${String(d.getUTCFullYear()).padStart(4, "0")}-${two(d.getUTCMonth() + 1)}-${two(d.getUTCDate())}`;
  const clock = `${two(d.getUTCHours())}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())}`;
  const frac = nanos > 0 ? `.${String(nanos).padStart(9, "0").replace(/0+$/, "")}` : "";
  return `${date}${sep}${clock}${frac}`;
}

/** A timestamp the way Go prints a UTC time.Time: `2006-01-02 15:04:05.123456789 +0000 UTC`. */
export function goTimeString(ts: { seconds: bigint; nanos: number } | undefined): string {
  return `${utcWithNanos(ts?.seconds ?? -62135596800n, ts?.nanos ?? 0, " ")} +0000 UTC`;
}

/** RFC 3339 with nanoseconds in UTC (Go's RFC3339Nano for a UTC time). */
export function rfc3339Nano(ts: { seconds: bigint; nanos: number }): string {
  return `${utcWithNanos(ts.seconds, ts.nanos, "T")}Z`;
}

/** Labels as `k=v,k2=v2`, sorted; `empty` when there are none. */
export function formatLabels(labels: Record<string, string> | undefined, empty = ""): string {
  const parts = Object.entries(labels ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .sort();
  return parts.length > 0 ? parts.join(",") : empty;
}

/**
 * Parse `KEY=VALUE` arguments. A bare `KEY` means "true" unless `bareKeys` is "skip", in which
 * case it is ignored (ctr's leases create does that).
 */
export function parseLabelArgs(
  args: readonly string[],
  bareKeys: "true" | "skip" = "true",
): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const arg of args) {
    const i = arg.indexOf("=");
    if (i < 0) {
      if (bareKeys === "true") labels[arg] = "true";
      continue;
    }
    labels[arg.slice(0, i)] = arg.slice(i + 1);
  }
  return labels;
}

/** JSON.stringify that writes bigint as a decimal string. */
export function toJsonText(value: unknown, indent?: number): string {
  return JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? v.toString() : v), indent);
}

/** Print a value as indented JSON on stdout. */
export function printJson(value: unknown): void {
  process.stdout.write(`${toJsonText(value, 2)}\n`);
}

/** Validate a --format value; returns true for json. */
export function wantsJson(format: string | undefined): boolean {
  if (format === undefined || format === "" || format === "table" || format === "text") return false;
  if (format === "json") return true;
  throw new Error(`unknown format ${JSON.stringify(format)} (want table or json)`);
}
