#!/usr/bin/env -S MALLOC_ARENA_MAX=2 node --max-semi-space-size=1
// Node settings for a long-running daemon: a 1 MiB young generation and two malloc arenas keep
// berthd's resident memory ~13 MiB lower at the same speed (bench/lifecycle.ts measures it).
import "../dist/src/cmd/berthd/main.js";
