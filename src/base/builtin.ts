// Node built-in modules loaded on first use. berthd compiles every built-in its bundle imports
// when it starts (~0.5 ms each, and their dependencies: `node:http` brings six more, `node:tls`
// three); the ones only a pull, a gzip'd gRPC message or an extraction thread needs are taken
// from here at the moment they are needed, so a daemon that never needs them never loads them.
import { createRequire } from "node:module";

const requireBuiltin = createRequire(import.meta.url);

export const zlib = (): typeof import("node:zlib") => requireBuiltin("node:zlib");
export const workerThreads = (): typeof import("node:worker_threads") =>
  requireBuiltin("node:worker_threads");
export const tls = (): typeof import("node:tls") => requireBuiltin("node:tls");
