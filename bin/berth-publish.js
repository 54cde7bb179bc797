#!/usr/bin/env node
// bin/ is CommonJS (bin/package.json); the command itself is an ES module.
import("../dist/src/cmd/publish/main.js").catch((err) => {
  process.stderr.write(`berth-publish: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
