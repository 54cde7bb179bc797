// The CLI's context: global options, the lazily opened connection to the daemon, and the
// `wire` that turns a command handler into a commander action. Command files import this (and
// shared helpers), never main.ts or each other, so main.ts only assembles the command groups.
import * as net from "node:net";
import { resolve } from "node:path";
import type { DescService } from "@bufbuild/protobuf";
import type { Command } from "commander";
import type { CallOptions, Client } from "../../grpc/client.js";
import { H2Connection } from "../../grpc/h2client.js";

export const DEFAULT_ADDRESS = "/run/berth/berth.sock";
const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

export interface GlobalOptions {
  address: string;
  namespace: string;
  /** --timeout: bounds connecting and each unary call. */
  timeoutMs?: number;
  /** --connect-timeout: bounds connecting only (falls back to --timeout, then 10s). */
  connectTimeoutMs?: number;
  debug: boolean;
}

/** What a command handler gets: the global options and a lazily connected client factory. */
export class CliContext {
  private conn?: H2Connection;
  private connecting?: Promise<void>;

  constructor(readonly globals: GlobalOptions) {}

  get namespace(): string {
    return this.globals.namespace;
  }

  /** A typed client for a service; the first call connects (and fails with a clear message). */
  async client<S extends DescService>(service: S): Promise<Client<S>> {
    if (!this.conn) {
      this.debug(`connecting to ${this.globals.address} (namespace ${this.namespace})`);
      const conn = new H2Connection(channelAddress(this.globals.address));
      this.conn = conn;
      this.connecting = this.connect(conn);
    }
    await this.connecting;
    return this.conn.client(service);
  }

  /** Options for unary calls and finite listings: namespace, plus --timeout as the deadline. */
  call(extra: Partial<CallOptions> = {}): CallOptions {
    const o: CallOptions = { namespace: this.namespace, ...extra };
    if (this.globals.timeoutMs && o.timeoutMs === undefined) o.timeoutMs = this.globals.timeoutMs;
    return o;
  }

  /** Options for open-ended streams (events, blob reads and writes): namespace only. */
  stream(extra: Partial<CallOptions> = {}): CallOptions {
    return { namespace: this.namespace, ...extra };
  }

  debug(msg: string): void {
    if (this.globals.debug) process.stderr.write(`berth: debug: ${msg}\n`);
  }

  /** Report a failure that does not stop the command; the exit status becomes 1. */
  fail(msg: string): void {
    process.stderr.write(`berth: ${msg}\n`);
    process.exitCode = 1;
  }

  close(): void {
    this.conn?.close();
  }

  private async connect(conn: H2Connection): Promise<void> {
    const { address } = this.globals;
    const timeoutMs = this.globals.connectTimeoutMs || this.globals.timeoutMs || DEFAULT_CONNECT_TIMEOUT_MS;
    const path = unixSocketPath(address);
    if (path !== undefined) await probeUnixSocket(path, address, timeoutMs);
    try {
      await conn.ready(timeoutMs);
    } catch (err) {
      this.debug(`waiting for the channel: ${(err as Error).message}`);
      throw new Error(
        `cannot connect to ${JSON.stringify(address)}: no gRPC server answered within ${timeoutMs}ms`,
      );
    }
    this.debug(`connected to ${channelAddress(address)}`);
  }
}

/** The filesystem path of a unix socket address, or undefined for other transports. */
export function unixSocketPath(address: string): string | undefined {
  if (address.startsWith("unix://")) return address.slice("unix://".length);
  if (address.startsWith("unix:")) return address.slice("unix:".length);
  if (address.includes("://")) return undefined;
  // Like ctr, a bare address is a socket path, relative ones included.
  return address;
}

/** The address as the gRPC channel needs it: socket paths become absolute `unix:` targets. */
export function channelAddress(address: string): string {
  const path = unixSocketPath(address);
  return path === undefined ? address : `unix:${resolve(path)}`;
}

/** Try the socket once so that a missing or dead daemon is reported at once and by cause. */
function probeUnixSocket(path: string, address: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection({ path });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`cannot connect to ${JSON.stringify(address)}: timed out after ${timeoutMs}ms`));
    }, timeoutMs);
    sock.once("connect", () => {
      clearTimeout(timer);
      sock.destroy();
      resolve();
    });
    sock.once("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const why =
        err.code === "ENOENT"
          ? "no such socket (is the daemon running?)"
          : err.code === "ECONNREFUSED"
            ? "connection refused (is the daemon running?)"
            : err.code === "EACCES" || err.code === "EPERM"
              ? "permission denied"
              : err.code === "ENOTSOCK"
                ? "not a socket"
                : err.message;
      reject(new Error(`cannot connect to ${JSON.stringify(address)}: ${why}`));
    });
  });
}

export type Handler = (ctx: CliContext, cmd: Command) => Promise<void>;
/** Turns a handler into a commander action: builds the context, runs, always disconnects. */
export type Wire = (handler: Handler) => (...args: unknown[]) => Promise<void>;

function globalsOf(cmd: Command): GlobalOptions {
  const o = cmd.optsWithGlobals<{
    address: string;
    namespace: string;
    timeout?: number;
    connectTimeout?: number;
    debug?: boolean;
  }>();
  return {
    address: o.address,
    namespace: o.namespace,
    timeoutMs: o.timeout,
    connectTimeoutMs: o.connectTimeout,
    debug: o.debug ?? false,
  };
}

export const wire: Wire =
  (handler) =>
  async (...args) => {
    const cmd = args[args.length - 1] as Command;
    const ctx = new CliContext(globalsOf(cmd));
    try {
      await handler(ctx, cmd);
    } finally {
      ctx.close();
    }
  };
