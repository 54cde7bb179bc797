// Issue #4 (registry side): the remotes client against the real Docker distribution registry —
// plain HTTP, htpasswd Basic auth, TLS with a CA made here, Bearer tokens from a token service run
// here (in front of the real registry), mirrors, hosts.toml edits, and faults injected by a small
// proxy in front of the registry (corrupt, truncated, 500, slow, redirects).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { BerthError } from "../../src/base/errdefs.js";
import { createLogger } from "../../src/base/log.js";
import type { Descriptor } from "../../src/core/images/media.js";
import { RegistryClient, userCredentials } from "../../src/core/remotes/client.js";
import { type BuiltImage, buildBusyboxImage, pushImage } from "../helpers/images.js";
import { freePort, htpasswdLine, type Registry, startRegistry } from "../helpers/registry.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const REPO = "test/busybox";
const PLATFORMS = [
  { os: "linux", architecture: "amd64" },
  { os: "linux", architecture: "arm64", variant: "v8" },
];

let img: BuiltImage;
let reg: Registry;
let dir: string;
const cleanups: (() => Promise<void>)[] = [];

const sha = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const descOf = (b: { mediaType: string; digest: string; size: number }): Descriptor => ({
  mediaType: b.mediaType,
  digest: b.digest,
  size: b.size,
});

async function readAll(s: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** Resolve and fetch every blob of the test image through `c`, checking bytes end to end. */
async function pullAll(c: RegistryClient, ref: string): Promise<void> {
  const r = await c.resolve(ref);
  assert.deepEqual(r.descriptor, descOf(img.target));
  const index = JSON.parse((await c.fetchBytes(ref, r.descriptor)).toString()) as { manifests: Descriptor[] };
  for (const m of index.manifests) {
    const man = JSON.parse((await c.fetchBytes(ref, m)).toString()) as {
      config: Descriptor;
      layers: Descriptor[];
    };
    for (const d of [man.config, ...man.layers]) {
      const data = await readAll(await c.fetch(ref, d));
      assert.equal(sha(data), d.digest);
    }
  }
}

function expectError(kind: string, pattern: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof BerthError, String(err));
    assert.match(err.message, pattern);
    assert.equal(err.kind, kind, err.message);
    return true;
  };
}

async function listen(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<{ server: Server; host: string }> {
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { server, host };
}

/** Forward a request to the real registry; `transform` may rewrite a buffered response. */
function forward(
  req: IncomingMessage,
  res: ServerResponse,
  target: string,
  headers: Record<string, string | string[] | undefined> = req.headers,
  onResponse?: (up: IncomingMessage, res: ServerResponse) => boolean,
) {
  const u = new URL(target);
  const up = request(
    {
      host: u.hostname,
      port: u.port,
      method: req.method,
      path: req.url,
      headers: { ...headers, host: u.host },
    },
    (r) => {
      if (onResponse?.(r, res)) return;
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    },
  );
  up.once("error", () => res.destroy());
  req.pipe(up);
}

type Fault = "corrupt" | "truncate" | "truncate-once" | "500-once" | "500-always" | "slow" | undefined;

before(async () => {
  dir = await makeTempDir("remotes");
  img = buildBusyboxImage({ platforms: PLATFORMS });
  reg = await startRegistry();
  await pushImage(reg.url, REPO, "1", img);
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
  await reg?.cleanup();
  if (dir) await removeTempDir(dir);
});

describe("pull over plain HTTP", () => {
  it("resolves a tag and fetches index, manifests, configs and layers", async () => {
    const c = new RegistryClient();
    try {
      await pullAll(c, `${reg.host}/${REPO}:1`);
      // by digest too (tag + digest, digest wins)
      const r = await c.resolve(`${reg.host}/${REPO}:nope@${img.target.digest}`);
      assert.equal(r.descriptor.digest, img.target.digest);
      await assert.rejects(
        c.resolve(`${reg.host}/${REPO}:missing`),
        expectError("not found", /:missing: not found on 127\.0\.0\.1/),
      );
    } finally {
      await c.close();
    }
  });

  it("refuses a Docker schema 1 manifest with a clear message", async () => {
    const { host } = await listen((req, res) => {
      if (req.url?.includes("/manifests/")) {
        const body = JSON.stringify({ schemaVersion: 1, name: "x", tag: "old", fsLayers: [] });
        res.writeHead(200, {
          "content-type": "application/vnd.docker.distribution.manifest.v1+prettyjws",
          "content-length": Buffer.byteLength(body),
        });
        res.end(req.method === "HEAD" ? undefined : body);
        return;
      }
      res.writeHead(404).end();
    });
    const c = new RegistryClient();
    try {
      await assert.rejects(
        c.resolve(`${host}/old/image:old`),
        expectError("not implemented", /schema 1 .* not supported/),
      );
    } finally {
      await c.close();
    }
  });
});

describe("faults injected by a proxy in front of the registry", () => {
  let fault: Fault;
  let hits = 0;
  let proxyHost: string;
  const layer = () => descOf(img.platforms[0]!.layers[0]!);

  before(async () => {
    ({ host: proxyHost } = await listen((req, res) => {
      const isBlob = req.method === "GET" && /\/blobs\/sha256:/.test(req.url ?? "");
      const isManifestHead = req.method === "HEAD" && /\/manifests\//.test(req.url ?? "");
      if (fault === "slow" && isManifestHead) return; // never answers
      if ((fault === "500-once" || fault === "500-always") && isManifestHead) {
        hits++;
        if (fault === "500-always" || hits === 1) {
          res.writeHead(500, { "content-type": "text/plain" }).end("injected failure");
          return;
        }
      }
      if (
        isBlob &&
        (fault === "corrupt" || fault === "truncate" || fault === "truncate-once") &&
        !req.headers.range
      ) {
        hits++;
        forward(req, res, reg.url, req.headers, (up, out) => {
          const chunks: Buffer[] = [];
          up.on("data", (c: Buffer) => chunks.push(c));
          up.on("end", () => {
            const body = Buffer.concat(chunks);
            out.writeHead(up.statusCode ?? 502, up.headers);
            if (fault === "corrupt") {
              body[body.length >> 1]! ^= 0xff;
              out.end(body);
              return;
            }
            if (fault === "truncate-once" && hits > 1) {
              out.end(body);
              return;
            }
            out.write(body.subarray(0, body.length >> 1), () => out.socket?.destroy());
          });
          return true;
        });
        return;
      }
      if (isBlob && fault === "truncate" && req.headers.range) {
        // resumed requests are cut as well
        forward(req, res, reg.url, req.headers, (up, out) => {
          out.writeHead(up.statusCode ?? 502, up.headers);
          up.once("data", (c: Buffer) => out.write(c.subarray(0, 10), () => out.socket?.destroy()));
          return true;
        });
        return;
      }
      forward(req, res, reg.url);
    }));
  });

  const client = (extra: ConstructorParameters<typeof RegistryClient>[0] = {}) =>
    new RegistryClient({ backoffMs: 10, fetch: { backoffMs: 10 }, ...extra });

  it("a corrupted blob is an error naming the digest and the host", async () => {
    fault = "corrupt";
    const c = client();
    try {
      const s = await c.fetch(`${proxyHost}/${REPO}:1`, layer());
      await assert.rejects(
        readAll(s),
        expectError("data loss", new RegExp(`${layer().digest} from ${proxyHost}: digest mismatch`)),
      );
    } finally {
      fault = undefined;
      await c.close();
    }
  });

  it("a body cut short every time is an error; cut once, the fetch resumes with Range", async () => {
    fault = "truncate";
    hits = 0;
    const c = client();
    try {
      const s = await c.fetch(`${proxyHost}/${REPO}:1`, layer());
      await assert.rejects(
        readAll(s),
        expectError(
          "data loss",
          new RegExp(`${layer().digest} from ${proxyHost}: truncated at \\d+ of ${layer().size} bytes`),
        ),
      );
      fault = "truncate-once";
      hits = 0;
      const data = await readAll(await c.fetch(`${proxyHost}/${REPO}:1`, layer()));
      assert.equal(sha(data), layer().digest);
    } finally {
      fault = undefined;
      await c.close();
    }
  });

  it("HTTP 500 then success is retried; 500 every time gives up with the status", async () => {
    fault = "500-once";
    hits = 0;
    const c = client();
    try {
      const r = await c.resolve(`${proxyHost}/${REPO}:1`);
      assert.equal(r.descriptor.digest, img.target.digest);
      assert.equal(hits, 2);
      fault = "500-always";
      hits = 0;
      await assert.rejects(
        c.resolve(`${proxyHost}/${REPO}:1`),
        expectError("unavailable", /answered HTTP 500 after 4 attempts/),
      );
    } finally {
      fault = undefined;
      await c.close();
    }
  });

  it("a server that never answers times out with a clear message", async () => {
    fault = "slow";
    const c = client({ headersTimeoutMs: 300 });
    try {
      await assert.rejects(
        c.resolve(`${proxyHost}/${REPO}:1`),
        expectError(
          "deadline exceeded",
          new RegExp(`${proxyHost} sent no response within 0.3s \\(timeout\\)`),
        ),
      );
    } finally {
      fault = undefined;
      await c.close();
    }
  });
});

describe("hosts.toml", () => {
  it("a mirror listed first but down falls back to the next, and edits apply to the next resolve", async () => {
    const certs = path.join(dir, "certs.d");
    const hostDir = path.join(certs, reg.host);
    await mkdir(hostDir, { recursive: true });
    const dead = `127.0.0.1:${await freePort()}`;
    const file = path.join(hostDir, "hosts.toml");
    await writeFile(file, `[host."http://${dead}"]\n  capabilities = ["pull", "resolve"]\n`);
    const c = new RegistryClient({ hosts: { configPaths: [certs] } });
    try {
      assert.deepEqual(
        (await c.hosts(reg.host)).map((h) => h.host),
        [dead, reg.host],
      );
      await pullAll(c, `${reg.host}/${REPO}:1`);
      // now only the dead server: the next resolve fails (and says where)
      await writeFile(file, `server = "http://${dead}"\n# edited\n`);
      await assert.rejects(
        c.resolve(`${reg.host}/${REPO}:1`),
        expectError("unavailable", new RegExp(`connection refused by ${dead}`)),
      );
      // back to the real one
      await writeFile(file, `server = "http://${reg.host}"\n`);
      assert.equal((await c.resolve(`${reg.host}/${REPO}:1`)).descriptor.digest, img.target.digest);
    } finally {
      await c.close();
    }
  });
});

describe("htpasswd Basic auth (docker-registry auth.htpasswd)", () => {
  let areg: Registry;
  before(async () => {
    const pw = path.join(dir, "htpasswd");
    await writeFile(pw, `${htpasswdLine("alice", "s3cret-pw")}\n`);
    areg = await startRegistry({ htpasswd: pw });
  });
  after(async () => {
    await areg?.cleanup();
  });

  it("pushes (upload, exists, cross-repo mount) and pulls with credentials", async () => {
    const logged: string[] = [];
    const logger = createLogger({ level: "trace", format: "text", write: (l) => logged.push(l) });
    const c = new RegistryClient({ credentials: userCredentials("alice:s3cret-pw"), logger });
    try {
      const ref = `${areg.host}/${REPO}:1`;
      for (const p of img.platforms) {
        for (const b of [...p.layers, p.config]) {
          const r = await c.pushBlob(ref, descOf(b), b.data);
          assert.ok(r === "uploaded" || r === "exists", r);
        }
        await c.pushManifest(ref, descOf(p.manifest), p.manifest.data, p.manifest.digest);
      }
      await c.pushManifest(ref, descOf(img.target), img.target.data);
      assert.equal(
        await c.pushBlob(ref, descOf(img.platforms[0]!.config), img.platforms[0]!.config.data),
        "exists",
      );
      const layer = img.platforms[0]!.layers[0]!;
      assert.equal(
        await c.pushBlob(`${areg.host}/other/repo:1`, descOf(layer), layer.data, { mountFrom: REPO }),
        "mounted",
      );
      await pullAll(c, ref);
      assert.ok(!logged.join("\n").includes("s3cret-pw"));
      assert.ok(!/Basic [A-Za-z0-9+/=]{8,}/.test(logged.join("\n")));
    } finally {
      await c.close();
    }
  });

  it("without credentials, a 401 names the registry; wrong ones say so", async () => {
    const anon = new RegistryClient();
    const wrong = new RegistryClient({ credentials: userCredentials("alice:nope") });
    try {
      await assert.rejects(
        anon.resolve(`${areg.host}/${REPO}:1`),
        expectError(
          "unauthenticated",
          new RegExp(`${areg.host} requires credentials|registry ${areg.host} refused access`),
        ),
      );
      await assert.rejects(
        wrong.resolve(`${areg.host}/${REPO}:1`),
        expectError(
          "unauthenticated",
          new RegExp(
            `registry ${areg.host} refused access \\(HTTP 401\\): the credentials given were not accepted`,
          ),
        ),
      );
    } finally {
      await anon.close();
      await wrong.close();
    }
  });
});

describe("TLS with a CA made by the test", () => {
  let treg: Registry;
  let ca: string;
  before(async () => {
    const t = path.join(dir, "tls");
    await mkdir(t, { recursive: true });
    ca = path.join(t, "ca.pem");
    const o = (args: string[]) =>
      execFileSync("openssl", args, { cwd: t, stdio: ["ignore", "pipe", "pipe"] });
    o([
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
      "-days",
      "2",
      "-subj",
      "/CN=berth test CA",
    ]);
    o([
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      "srv.key",
      "-out",
      "srv.csr",
      "-subj",
      "/CN=127.0.0.1",
    ]);
    await writeFile(path.join(t, "ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n");
    o([
      "x509",
      "-req",
      "-in",
      "srv.csr",
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      "srv.pem",
      "-days",
      "2",
      "-extfile",
      "ext.cnf",
    ]);
    treg = await startRegistry({
      tls: { certificate: path.join(t, "srv.pem"), key: path.join(t, "srv.key") },
    });
    const c = new RegistryClient({ hosts: { defaultTls: { skipVerify: true }, configPaths: [] } });
    // push over https (the loopback default is http, so say https in hosts.toml-less form)
    const certs = path.join(dir, "certs-push");
    await mkdir(path.join(certs, treg.host), { recursive: true });
    await writeFile(
      path.join(certs, treg.host, "hosts.toml"),
      `server = "https://${treg.host}"\nskip_verify = true\n`,
    );
    const pc = new RegistryClient({ hosts: { configPaths: [certs] } });
    try {
      const ref = `${treg.host}/${REPO}:1`;
      for (const p of img.platforms) {
        for (const b of [...p.layers, p.config]) await pc.pushBlob(ref, descOf(b), b.data);
        await pc.pushManifest(ref, descOf(p.manifest), p.manifest.data, p.manifest.digest);
      }
      await pc.pushManifest(ref, descOf(img.target), img.target.data);
    } finally {
      await pc.close();
      await c.close();
    }
  });
  after(async () => {
    await treg?.cleanup();
  });

  async function withHosts(toml: string, fn: (c: RegistryClient) => Promise<void>) {
    const certs = await makeTempDir("certs");
    try {
      await mkdir(path.join(certs, treg.host), { recursive: true });
      await writeFile(path.join(certs, treg.host, "hosts.toml"), toml);
      const c = new RegistryClient({ hosts: { configPaths: [certs] } });
      try {
        await fn(c);
      } finally {
        await c.close();
      }
    } finally {
      await removeTempDir(certs);
    }
  }

  it("verifies with the CA from hosts.toml", async () => {
    await withHosts(`server = "https://${treg.host}"\nca = "${ca}"\n`, (c) =>
      pullAll(c, `${treg.host}/${REPO}:1`),
    );
  });
  it("refuses without the CA, with a message saying what to do", async () => {
    await withHosts(`server = "https://${treg.host}"\n`, async (c) => {
      await assert.rejects(
        c.resolve(`${treg.host}/${REPO}:1`),
        expectError(
          "unavailable",
          new RegExp(
            `TLS certificate of ${treg.host} is not trusted .*add its CA with "ca" in hosts.toml or set skip_verify`,
          ),
        ),
      );
    });
  });
  it("accepts with skip_verify", async () => {
    await withHosts(`server = "https://${treg.host}"\nskip_verify = true\n`, (c) =>
      pullAll(c, `${treg.host}/${REPO}:1`),
    );
  });
});

describe("Bearer token auth (token service in front of the real registry)", () => {
  it("gets a token with Basic credentials, caches it, and drops Authorization on a cross-host redirect", async () => {
    const TOKEN = "tok-123456";
    let tokenRequests = 0;
    const scopesSeen: string[] = [];
    let storeSawAuth: string | undefined = "unset";
    // "blob storage" on another port: serves blobs from the registry, records Authorization
    const { host: storeHost } = await listen((req, res) => {
      storeSawAuth = req.headers.authorization;
      forward(req, res, reg.url, { ...req.headers });
    });
    const { host: front } = await listen((req, res) => {
      const u = new URL(req.url ?? "/", "http://x");
      if (u.pathname === "/token") {
        tokenRequests++;
        scopesSeen.push(...u.searchParams.getAll("scope"));
        const basic = `Basic ${Buffer.from("bob:pw-bob").toString("base64")}`;
        if (req.headers.authorization !== basic || u.searchParams.get("service") !== "berth-test") {
          res.writeHead(401).end();
          return;
        }
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ token: TOKEN, expires_in: 300 }));
        return;
      }
      if (req.headers.authorization !== `Bearer ${TOKEN}`) {
        res.writeHead(401, {
          "www-authenticate": `Bearer realm="http://${front}/token",service="berth-test",scope="repository:${REPO}:pull"`,
          "content-type": "application/json",
        });
        res.end('{"errors":[{"code":"UNAUTHORIZED"}]}');
        return;
      }
      if (req.method === "GET" && /\/blobs\//.test(u.pathname)) {
        res.writeHead(307, { location: `http://${storeHost}${req.url}` }).end();
        return;
      }
      const { authorization: _drop, ...rest } = req.headers;
      forward(req, res, reg.url, rest);
    });
    const c = new RegistryClient({ credentials: userCredentials("bob:pw-bob", front) });
    try {
      await pullAll(c, `${front}/${REPO}:1`);
      assert.equal(tokenRequests, 1, "token cached for the scope");
      assert.deepEqual([...new Set(scopesSeen)], [`repository:${REPO}:pull`]);
      assert.equal(storeSawAuth, undefined, "Authorization must not reach another host");
      const anon = new RegistryClient();
      try {
        await assert.rejects(
          anon.resolve(`${front}/${REPO}:1`),
          expectError(
            "unauthenticated",
            new RegExp(`token service ${front} for ${front} refused anonymous access`),
          ),
        );
      } finally {
        await anon.close();
      }
    } finally {
      await c.close();
    }
  });
});
