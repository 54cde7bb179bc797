#!/usr/bin/env -S MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=4194304 MALLOC_TRIM_THRESHOLD_=67108864 node --max-semi-space-size=4
// Node settings for a long-running daemon: a smaller young generation (4 MiB semi-spaces, not
// 16) and two malloc arenas keep berthd's resident memory ~10 MiB lower under container churn;
// 1 MiB saved a few MiB more but made pulls ~10% slower (bench/lifecycle.ts, bench/pull.ts).
// Buffers up to 4 MiB come from malloc's heap, and up to 64 MiB freed at its top stay there: with
// glibc's defaults, a large answer's 256 KiB parts and a blob's read buffers were fresh pages at
// every call, each first touch a fault that costs microseconds on a VM (Containers/List of 5,000
// containers ~150 -> ~118 ms as bytes; docs/performance.md, finding 65).
// dist/bundle/berthd.cjs is dist/src/cmd/berthd/main.js bundled into one file (scripts/bundle.ts):
// it starts in about half the time and with ~10 MiB less resident memory than the module graph,
// and run-bundle.js compiles it with the V8 code cache the build made after a start of the daemon
// (docs/performance.md, findings 11 and 63). The cache was made under the flags above: V8 turns it
// down under others, and berthd then compiles from source.
const { join } = require("node:path");
const { runBundle } = require("./run-bundle.js");

runBundle(join(__dirname, "../dist/bundle/berthd.cjs"));
