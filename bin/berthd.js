#!/usr/bin/env -S MALLOC_ARENA_MAX=2 node --max-semi-space-size=4
// Node settings for a long-running daemon: a smaller young generation (4 MiB semi-spaces, not
// 16) and two malloc arenas keep berthd's resident memory ~10 MiB lower under container churn;
// 1 MiB saved a few MiB more but made pulls ~10% slower (bench/lifecycle.ts, bench/pull.ts).
import "../dist/src/cmd/berthd/main.js";
