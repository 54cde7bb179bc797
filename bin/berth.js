#!/usr/bin/env node
// The berth CLI: dist/bundle/berth.cjs, dist/src/cmd/berth/main.js bundled into one CommonJS file
// (scripts/bundle.ts), run with the V8 code cache the build made next to it (run-bundle.js). The
// bundle starts a command in ~0.2 s instead of ~0.45 s for the module graph file by file; the
// cache takes another ~25 ms off (docs/performance.md, findings 51 and 59): the pull benchmark
// runs `berth images pull`, and every shell completion runs a command.
const { join } = require("node:path");
const { runBundle } = require("./run-bundle.js");

runBundle(join(__dirname, "../dist/bundle/berth.cjs"));
