// Log URIs for a process's stdout and stderr, in the forms containerd's cio writes and the runc
// shim reads: a path without a scheme is a FIFO; `file:///abs/path` makes the shim append both
// streams to that file (creating its directory); `binary:///abs/path?k=v` makes it start that
// logging binary with the query as its arguments (`k v`), the streams on fds 3 and 4, a readiness
// pipe on fd 5, and CONTAINER_ID/CONTAINER_NAMESPACE in its environment. Stdin stays empty.
import path from "node:path";
import { configIO, type TaskIO } from "./io.js";

const hex = (b: number) => `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
const UNRESERVED = /[A-Za-z0-9\-_.~]/;

/** Percent-encoding of a URL path as Go's url.URL.String writes it (sub-delims and / kept). */
export function escapePath(p: string): string {
  let out = "";
  for (const b of Buffer.from(p, "utf8")) {
    const c = String.fromCharCode(b);
    out += b < 0x80 && (UNRESERVED.test(c) || "$&+,/:;=@".includes(c)) ? c : hex(b);
  }
  return out;
}

/** Go's url.QueryEscape: unreserved kept, space as `+`, the rest percent-encoded. */
export function escapeQuery(s: string): string {
  let out = "";
  for (const b of Buffer.from(s, "utf8")) {
    const c = String.fromCharCode(b);
    out += b === 0x20 ? "+" : b < 0x80 && UNRESERVED.test(c) ? c : hex(b);
  }
  return out;
}

/**
 * `scheme://` + the cleaned absolute `p` + `?` + `args` encoded with keys sorted (as Go's
 * url.Values.Encode), or without a query when there are no args.
 */
export function logURI(scheme: string, p: string, args: Record<string, string> = {}): string {
  const clean = path.posix.normalize(p);
  if (!clean.startsWith("/")) throw new Error("absolute path needed");
  const stripped = clean.length > 1 && clean.endsWith("/") ? clean.slice(0, -1) : clean;
  const keys = Object.keys(args).sort();
  const query = keys.map((k) => `${escapeQuery(k)}=${escapeQuery(args[k] ?? "")}`).join("&");
  return `${scheme}://${escapePath(stripped)}${query ? `?${query}` : ""}`;
}

/** stdout and stderr appended to the file at `file` by the shim. */
export function logFileIO(file: string): TaskIO {
  const uri = logURI("file", file);
  return configIO({ stdin: "", stdout: uri, stderr: uri, terminal: false });
}

/** stdout and stderr handed to the logging binary at `binary`, started by the shim with `args`. */
export function binaryIO(binary: string, args: Record<string, string> = {}, terminal = false): TaskIO {
  const uri = logURI("binary", binary, args);
  return configIO({ stdin: "", stdout: uri, stderr: uri, terminal });
}

/**
 * A log URI given as is for stdout and stderr (as ctr's --log-uri passes it on): the shim takes
 * `file` and `binary`, a value without a scheme as a FIFO path, and refuses other schemes.
 */
export function logURIIO(uri: string): TaskIO {
  return configIO({ stdin: "", stdout: uri, stderr: uri, terminal: false });
}

/**
 * How the runc shim reads a stdout value: its scheme ("fifo" without one), the path, and for
 * `binary` the arguments: each query key followed by its first value (the shim does not define
 * the order of the keys; this keeps the URI's).
 */
export function parseIOURI(value: string): { scheme: string; path: string; args: string[] } {
  if (!/^[A-Za-z][A-Za-z0-9+.-]*:/.test(value)) return { scheme: "fifo", path: value, args: [] };
  const u = new URL(value);
  const args: string[] = [];
  for (const k of new Set(u.searchParams.keys())) args.push(k, u.searchParams.get(k) ?? "");
  return { scheme: u.protocol.slice(0, -1), path: decodeURIComponent(u.pathname), args };
}
