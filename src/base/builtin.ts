// Modules loaded on first use. berthd compiles every built-in its bundle imports when it starts
// (~0.5 ms each, and their dependencies: `node:http` brings six more, `node:tls` three); the ones
// only a pull, a gzip'd gRPC message or an extraction thread needs are taken from here at the
// moment they are needed, so a daemon that never needs them never loads them. The dependencies
// kept out of the bundle for the same reason (undici, prom-client) are loaded with `onDemand`.
//
// Through require(), not import(): berthd's bundle runs from a V8 code cache, and in Node 20 code
// from a cache has no loader for import() (bin/run-bundle.js).
import { createRequire } from "node:module";

export const onDemand = createRequire(import.meta.url);

export const zlib = (): typeof import("node:zlib") => onDemand("node:zlib");
export const workerThreads = (): typeof import("node:worker_threads") => onDemand("node:worker_threads");
export const tls = (): typeof import("node:tls") => onDemand("node:tls");
