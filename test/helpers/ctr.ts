// Run the real ctr, or berth's own CLI, against a daemon socket.
import { spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import path from "node:path";
import type { Readable, Writable } from "node:stream";
import { repoRoot } from "./daemons.js";

export const CTR_BIN = "/usr/bin/ctr";

export interface RunOptions {
  /** Standard input: text/bytes, a file to read from (passed as the fd), or a stream. Default: none. */
  input?: string | Buffer | { file: string } | Readable;
  /** Where standard output goes. Default: collected into `stdout`. */
  output?: "collect" | "ignore" | { file: string } | ((chunk: Buffer) => void);
  /** Namespace (the CLI's --namespace). Omitted: the CLI's default. */
  namespace?: string;
  /** Kill the process (SIGKILL) after this long; the result then has signal "SIGKILL". Default 120 s. */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time from spawn to exit. */
  ms: number;
}

/** Runs a command and collects its result; never throws for a non-zero exit. */
export async function run(command: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const fds: number[] = [];
  const openFd = (file: string, flags: string) => {
    const fd = openSync(file, flags);
    fds.push(fd);
    return fd;
  };
  try {
    const input = opts.input;
    const stdin =
      input === undefined
        ? "ignore"
        : typeof input === "object" && "file" in input
          ? openFd(input.file, "r")
          : "pipe";
    const output = opts.output ?? "collect";
    const stdout =
      output === "ignore" ? "ignore" : typeof output === "object" ? openFd(output.file, "w") : "pipe";
    const start = process.hrtime.bigint();
    const child = spawn(command, args, { stdio: [stdin, stdout, "pipe"], env: opts.env ?? process.env });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    if (child.stdout) {
      if (typeof output === "function") child.stdout.on("data", output);
      else child.stdout.on("data", (c: Buffer) => out.push(c));
    }
    child.stderr!.on("data", (c: Buffer) => err.push(c));
    if (child.stdin) {
      child.stdin.on("error", () => {}); // the command may exit without reading everything
      if (typeof input === "string" || Buffer.isBuffer(input)) child.stdin.end(input);
      else if (input && "pipe" in input) (input as Readable).pipe(child.stdin as Writable);
    }
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 120_000);
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.once("error", reject);
      child.once("close", (c, s) => resolve([c, s]));
    }).finally(() => clearTimeout(timer));
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    return {
      code,
      signal,
      stdout: Buffer.concat(out).toString("utf8"),
      stderr: Buffer.concat(err).toString("utf8"),
      ms,
    };
  } finally {
    for (const fd of fds) closeSync(fd);
  }
}

/** Runs `/usr/bin/ctr --address <address> [--namespace ns] <args…>`. */
export function ctr(address: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const global = ["--address", address];
  if (opts.namespace !== undefined) global.push("--namespace", opts.namespace);
  return run(CTR_BIN, [...global, ...args], opts);
}

/** Runs `node bin/berth.js --address <address> [--namespace ns] <args…>`. */
export function berth(address: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const global = ["--address", address];
  if (opts.namespace !== undefined) global.push("--namespace", opts.namespace);
  return run(process.execPath, [path.join(repoRoot, "bin/berth.js"), ...global, ...args], opts);
}

/** Throws with the command's stderr unless it exited 0; returns stdout. */
export function ok(r: RunResult, what = "command"): string {
  if (r.code !== 0) {
    throw new Error(
      `${what} failed (code ${r.code}, signal ${r.signal}): ${r.stderr.trim() || r.stdout.trim()}`,
    );
  }
  return r.stdout;
}
