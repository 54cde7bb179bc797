// Leveled logger with containerd's two formats: logfmt text (`time=... level=info msg="..." k=v`)
// and json. Fields are flat key/values; credentials must never be passed in.
export type Level = "trace" | "debug" | "info" | "warn" | "error" | "fatal" | "panic";
const ORDER: Record<Level, number> = { trace: 0, debug: 1, info: 2, warn: 3, error: 4, fatal: 5, panic: 6 };
export const LEVELS = Object.keys(ORDER) as Level[];

export type Fields = Record<string, unknown>;

export interface Logger {
  trace(msg: string, f?: Fields): void;
  debug(msg: string, f?: Fields): void;
  info(msg: string, f?: Fields): void;
  warn(msg: string, f?: Fields): void;
  error(msg: string, f?: Fields): void;
  child(f: Fields): Logger;
  enabled(level: Level): boolean;
}

export interface LogSink {
  level: Level;
  format: "text" | "json";
  write(line: string): void;
}

function quoteIfNeeded(v: string): string {
  return /^[A-Za-z0-9_.\-/:@+]+$/.test(v) ? v : JSON.stringify(v);
}

function fmtValue(v: unknown): string {
  if (v instanceof Error) return v.message;
  if (typeof v === "string") return v;
  if (typeof v === "bigint") return v.toString();
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

// Field keys whose values are never written: credentials that slip into fields (an HTTP header
// map, a registry auth table) come out as "[redacted]", at any depth.
const SECRET_KEY =
  /^(authorization|proxy-authorization|password|passwd|secret|token|access_token|refresh_token|identitytoken|identity_token|auth|x-registry-auth)$/i;
const REDACTED = "[redacted]";

function redactValue(v: unknown, depth: number): unknown {
  if (typeof v === "string") return v.replace(/\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+/g, `$1 ${REDACTED}`);
  if (depth > 4 || v === null || typeof v !== "object" || v instanceof Error) return v;
  if (Array.isArray(v)) return v.map((x) => redactValue(x, depth + 1));
  const o: Fields = {};
  for (const [k, x] of Object.entries(v)) o[k] = SECRET_KEY.test(k) ? REDACTED : redactValue(x, depth + 1);
  return o;
}

/** A copy of `f` with secret-looking keys and `Bearer …`/`Basic …` credentials replaced. */
export function redactFields(f: Fields): Fields {
  return redactValue(f, 0) as Fields;
}

export function parseLevel(s: string): Level {
  const l = (s === "warning" ? "warn" : s) as Level;
  if (!(l in ORDER))
    throw new Error(`unknown log level ${JSON.stringify(s)} (want one of ${LEVELS.join(", ")})`);
  return l;
}

class SinkLogger implements Logger {
  constructor(
    private sink: LogSink,
    private fields: Fields,
  ) {}
  enabled(level: Level): boolean {
    return ORDER[level] >= ORDER[this.sink.level];
  }
  private log(level: Level, message: string, f?: Fields) {
    if (!this.enabled(level)) return;
    const all = redactFields({ ...this.fields, ...f });
    const msg = redactValue(message, 0) as string;
    const time = new Date().toISOString();
    if (this.sink.format === "json") {
      const o: Fields = { level: level === "warn" ? "warning" : level, msg, time };
      for (const [k, v] of Object.entries(all)) o[k] = v instanceof Error ? v.message : v;
      this.sink.write(JSON.stringify(o, (_k, v) => (typeof v === "bigint" ? v.toString() : v)));
      return;
    }
    let line = `time=${JSON.stringify(time)} level=${level === "warn" ? "warning" : level} msg=${JSON.stringify(msg)}`;
    for (const [k, v] of Object.entries(all))
      if (v !== undefined) line += ` ${k}=${quoteIfNeeded(fmtValue(v))}`;
    this.sink.write(line);
  }
  trace(m: string, f?: Fields) {
    this.log("trace", m, f);
  }
  debug(m: string, f?: Fields) {
    this.log("debug", m, f);
  }
  info(m: string, f?: Fields) {
    this.log("info", m, f);
  }
  warn(m: string, f?: Fields) {
    this.log("warn", m, f);
  }
  error(m: string, f?: Fields) {
    this.log("error", m, f);
  }
  child(f: Fields): Logger {
    return new SinkLogger(this.sink, { ...this.fields, ...f });
  }
}

export function createLogger(sink: LogSink, fields: Fields = {}): Logger {
  return new SinkLogger(sink, fields);
}

/** A logger on stderr; the sink is mutable so config can change level/format after start. */
export function stderrSink(level: Level = "info", format: "text" | "json" = "text"): LogSink {
  return { level, format, write: (line) => process.stderr.write(`${line}\n`) };
}

export const nopLogger: Logger = createLogger({ level: "panic", format: "text", write: () => {} });
