#!/usr/bin/env -S MALLOC_ARENA_MAX=2 node --max-semi-space-size=4
// Node settings for a long-running daemon: a smaller young generation (4 MiB semi-spaces, not
// 16) and two malloc arenas keep berthd's resident memory ~10 MiB lower under container churn;
// 1 MiB saved a few MiB more but made pulls ~10% slower (bench/lifecycle.ts, bench/pull.ts).
// dist/bundle/berthd.js is dist/src/cmd/berthd/main.js bundled into one file (scripts/bundle.ts):
// it starts in about half the time and with ~10 MiB less resident memory.
import "../dist/bundle/berthd.js";
