// The registry transport loads only undici's connection pool and request API, not the package's
// entry (fetch, WebSocket, cache, mock and proxy code): that entry was ~100 ms on the first pull's
// critical path. A request still reaches the registry with its path and query intact, its body,
// and the answer's status, headers and body. Each test file runs in its own process, so the
// module cache below is this file's alone.
import assert from "node:assert/strict";
import { createServer, type IncomingMessage } from "node:http";
import { createRequire } from "node:module";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import type { RegistryHost } from "../../src/core/remotes/hosts.js";
import { Transport } from "../../src/core/remotes/transport.js";

const require = createRequire(import.meta.url);
const seen: { method: string; url: string; body: string; ua: string }[] = [];
const server = createServer((req: IncomingMessage, res) => {
  const parts: Buffer[] = [];
  req.on("data", (c: Buffer) => parts.push(c));
  req.on("end", () => {
    seen.push({
      method: req.method ?? "",
      url: req.url ?? "",
      body: Buffer.concat(parts).toString(),
      ua: String(req.headers["user-agent"]),
    });
    res.writeHead(200, { "content-type": "text/plain", "docker-content-digest": "sha256:abc" });
    res.end(`answer to ${req.method} ${req.url}`);
  });
});
let host: RegistryHost;

before(async () => {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  host = {
    scheme: "http",
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    path: "/v2",
    capabilities: ["pull", "resolve", "push"],
    tls: { caFiles: [], clientPairs: [] },
    headers: {},
  };
});
after(() => new Promise<void>((resolve) => server.close(() => resolve())));

test("a request goes out with its path, query and body; only undici's pool and request API are loaded", async () => {
  const t = new Transport({ userAgent: "berth-test/1" });
  try {
    const got = await t.send({
      method: "GET",
      path: "/library/x/tags/list?n=2&last=a%2Fb",
      host,
      scopes: [],
    });
    assert.equal(got.status, 200);
    assert.equal(got.headers["docker-content-digest"], "sha256:abc");
    assert.equal(await got.body.text(), "answer to GET /v2/library/x/tags/list?n=2&last=a%2Fb");
    const put = await t.send({
      method: "PUT",
      path: "/library/x/manifests/1",
      host,
      scopes: [],
      body: Buffer.from("{}"),
    });
    assert.equal(put.status, 200);
    await put.body.dump();
  } finally {
    await t.close();
  }
  assert.deepEqual(seen, [
    { method: "GET", url: "/v2/library/x/tags/list?n=2&last=a%2Fb", body: "", ua: "berth-test/1" },
    { method: "PUT", url: "/v2/library/x/manifests/1", body: "{}", ua: "berth-test/1" },
  ]);
  const loaded = Object.keys(require.cache);
  assert.ok(loaded.includes(require.resolve("undici/lib/dispatcher/agent.js")), "undici's Agent was loaded");
  for (const entry of ["undici", "undici/lib/web/fetch/index.js"])
    assert.ok(!loaded.includes(require.resolve(entry)), `${entry} was not loaded`);
});
