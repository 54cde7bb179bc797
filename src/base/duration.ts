// Go's time.Duration text, the form containerd's config and clients use ("10s", "1h30m",
// "24h0m0s"): parsing into milliseconds and formatting nanoseconds.

const DURATION_UNITS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  μs: 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

/** Parse a Go duration ("10s", "1h30m", "500ms", "0", "24h0m0s") into milliseconds. */
export function parseDuration(input: string): number {
  const s = input.trim();
  let rest = s;
  let sign = 1;
  if (rest.startsWith("-") || rest.startsWith("+")) {
    if (rest[0] === "-") sign = -1;
    rest = rest.slice(1);
  }
  if (rest === "0") return 0;
  if (rest === "") throw new Error(`invalid duration ${JSON.stringify(input)}`);
  let total = 0;
  const re = /^(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/;
  while (rest.length > 0) {
    const m = re.exec(rest);
    if (!m) {
      const unitless = /^(\d+(?:\.\d*)?|\.\d+)$/.test(rest);
      throw new Error(`${unitless ? "missing unit in" : "invalid"} duration ${JSON.stringify(input)}`);
    }
    total += Number(m[1]) * DURATION_UNITS[m[2]!]!;
    rest = rest.slice(m[0].length);
  }
  return sign * total;
}

function fracString(v: bigint, div: bigint): string {
  const i = v / div;
  const f = v % div;
  if (f === 0n) return `${i}`;
  const digits = div.toString().length - 1;
  return `${i}.${f.toString().padStart(digits, "0").replace(/0+$/, "")}`;
}

/** Go's time.Duration String() for nanoseconds: "0s", "850µs", "1.5s", "2m3.25s", "1h0m0s". */
export function goDuration(ns: bigint): string {
  if (ns === 0n) return "0s";
  const sign = ns < 0n ? "-" : "";
  let u = ns < 0n ? -ns : ns;
  if (u < 1000n) return `${sign}${u}ns`;
  if (u < 1_000_000n) return `${sign}${fracString(u, 1000n)}µs`;
  if (u < 1_000_000_000n) return `${sign}${fracString(u, 1_000_000n)}ms`;
  const h = u / 3_600_000_000_000n;
  u %= 3_600_000_000_000n;
  const m = u / 60_000_000_000n;
  u %= 60_000_000_000n;
  const s = `${fracString(u, 1_000_000_000n)}s`;
  if (h > 0n) return `${sign}${h}h${m}m${s}`;
  if (m > 0n) return `${sign}${m}m${s}`;
  return `${sign}${s}`;
}
