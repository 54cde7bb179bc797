// The optional HTTP endpoints: [metrics] address (TCP host:port, Prometheus text at /v1/metrics,
// as containerd; prom-client is loaded only when it is set) and [debug] address (a unix socket
// with /debug/vars, process stats as JSON, and /debug/gc, the same after a full collection).
// berthd imports this module only when one of them is configured: node:http and its six
// dependencies, node:v8 and node:vm are not compiled at start otherwise.
import { chmodSync, chownSync, mkdirSync, unlinkSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { getHeapStatistics, setFlagsFromString, writeHeapSnapshot } from "node:v8";
import { runInNewContext } from "node:vm";
import type { PrometheusExporter } from "../../core/metrics/prometheus.js";
import type { Metrics } from "../../core/metrics.js";
import { mallocTrim } from "../../sys/malloc.js";
import { prepareSocketPath } from "./socket.js";

function listen(server: Server, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    if (address.startsWith("/")) server.listen(address, () => resolve());
    else {
      const i = address.lastIndexOf(":");
      if (i < 0) {
        reject(new Error(`address ${JSON.stringify(address)}: want host:port or a unix socket path`));
        return;
      }
      const host = address.slice(0, i).replace(/^\[|\]$/g, "") || "127.0.0.1";
      server.listen(Number(address.slice(i + 1)), host, () => resolve());
    }
  });
}

/** Each Metrics object's exporter, made (and prom-client loaded) by the first listener. */
const exporters = new WeakMap<Metrics, Promise<PrometheusExporter>>();
/** Open listeners per exporter: the core hooks are routed to it while there is one. */
const listeners = new WeakMap<PrometheusExporter, number>();

/**
 * Serve `metrics` as Prometheus text at /v1/metrics on `address`. Several listeners (a reload
 * opening the new one before closing the old) share one exporter, so counters carry over.
 */
export async function serveMetrics(address: string, metrics: Metrics): Promise<Server> {
  let made = exporters.get(metrics);
  if (!made) {
    made = import("../../core/metrics/prometheus.js").then((m) =>
      m.PrometheusExporter.create(metrics, metrics.sources),
    );
    exporters.set(metrics, made);
    made.catch(() => exporters.delete(metrics));
  }
  const exporter = await made;
  const server = createServer((req, res) => {
    if (req.url === "/v1/metrics" || req.url === "/metrics") {
      exporter.render().then(
        (text) => res.writeHead(200, { "content-type": exporter.contentType }).end(text),
        (err: Error) => res.writeHead(500).end(`${err.message}\n`),
      );
      return;
    }
    res.writeHead(404).end("not found\n");
  });
  await listen(server, address);
  listeners.set(exporter, (listeners.get(exporter) ?? 0) + 1);
  exporter.install();
  server.once("close", () => {
    const n = (listeners.get(exporter) ?? 1) - 1;
    listeners.set(exporter, n);
    if (n === 0) exporter.uninstall();
  });
  return server;
}

let gcFn: (() => void) | undefined;

/**
 * A full V8 collection without starting berthd with --expose-gc: the flag is set at run time and
 * `gc` taken from a fresh context (only the debug socket, root's, can ask for it).
 */
function fullGc(): void {
  if (!gcFn) {
    setFlagsFromString("--expose-gc");
    gcFn = runInNewContext("gc") as () => void;
  }
  gcFn();
}

export async function serveDebug(address: string, uid: number, gid: number): Promise<Server> {
  if (!address.startsWith("/"))
    throw new Error(`debug.address ${JSON.stringify(address)} must be a unix socket path`);
  mkdirSync(dirname(address), { recursive: true, mode: 0o711 });
  await prepareSocketPath(address);
  const server = createServer((req, res) => {
    if (req.url === "/debug/vars") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          cmdline: process.argv,
          memstats: process.memoryUsage(),
          resources: process.resourceUsage(),
        }),
      );
      return;
    }
    if (req.url === "/debug/heapsnapshot") {
      // a V8 heap snapshot for leak hunting (Chrome DevTools reads it); the event loop stops while
      // it is written, so this is for debugging only
      const file = writeHeapSnapshot(join(tmpdir(), `berthd-${process.pid}-${Date.now()}.heapsnapshot`));
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ file }));
      return;
    }
    if (req.url === "/debug/gc" || req.url === "/debug/gc?trim=1") {
      // A full collection first, so the heap figures are what is live (memory-over-time runs);
      // ?trim=1 then hands free malloc memory back to the kernel (what RSS would be without it).
      fullGc();
      if (req.url.endsWith("trim=1")) mallocTrim();
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ memstats: process.memoryUsage(), heap: getHeapStatistics() }));
      return;
    }
    res.writeHead(404).end("not found\n");
  });
  await listen(server, address);
  chmodSync(address, 0o660);
  chownSync(address, uid, gid);
  server.on("close", () => {
    try {
      unlinkSync(address);
    } catch {
      // gone already
    }
  });
  return server;
}
