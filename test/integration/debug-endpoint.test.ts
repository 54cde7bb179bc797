// [debug] address: a root-only unix socket with process stats (/debug/vars) and the same after a
// full garbage collection (/debug/gc), which the memory-over-time benchmark reads.
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { get } from "node:http";
import path from "node:path";
import { after, before, test } from "node:test";
import { type Daemon, startBerthd } from "../helpers/daemons.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

let dir: string;
let d: Daemon;
let sock: string;

interface DebugVars {
  cmdline: string[];
  memstats: NodeJS.MemoryUsage;
  heap: { used_heap_size: number };
}

function fetchJson(p: string): Promise<DebugVars> {
  return new Promise((resolve, reject) => {
    get({ socketPath: sock, path: p }, (res) => {
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => {
        if (res.statusCode !== 200) reject(new Error(`${p}: HTTP ${res.statusCode}: ${body}`));
        else resolve(JSON.parse(body));
      });
    }).on("error", reject);
  });
}

before(async () => {
  dir = await makeTempDir("debug-endpoint");
  sock = path.join(dir, "debug.sock");
  d = await startBerthd({ config: `version = 2\n[debug]\naddress = ${JSON.stringify(sock)}\n` });
});
after(async () => {
  await d?.cleanup();
  await removeTempDir(dir);
});

test("the debug socket is 0660 and /debug/vars reports the process", async () => {
  assert.equal(statSync(sock).mode & 0o777, 0o660);
  const v = await fetchJson("/debug/vars");
  assert.ok(v.memstats.rss > 0 && v.memstats.heapUsed > 0);
  assert.ok(Array.isArray(v.cmdline));
});

test("/debug/gc collects first: the heap it reports is at most what was used before", async () => {
  const before = (await fetchJson("/debug/vars")).memstats.heapUsed;
  const g = await fetchJson("/debug/gc");
  assert.ok(g.heap.used_heap_size > 0 && g.memstats.heapUsed > 0);
  assert.ok(g.memstats.heapUsed <= before * 1.05, `after GC ${g.memstats.heapUsed} > before ${before}`);
  // a second collection changes little: nothing is left to collect
  const g2 = await fetchJson("/debug/gc");
  assert.ok(Math.abs(g2.memstats.heapUsed - g.memstats.heapUsed) < 2 << 20);
});

test("an unknown path is 404", async () => {
  await assert.rejects(fetchJson("/debug/nope"), /HTTP 404/);
});

test("/debug/gc?trim=1 also hands free malloc memory back: RSS does not grow from it", async () => {
  const a = await fetchJson("/debug/gc");
  const b = await fetchJson("/debug/gc?trim=1");
  assert.ok(b.memstats.rss <= a.memstats.rss + (1 << 20), `rss ${a.memstats.rss} → ${b.memstats.rss}`);
});
