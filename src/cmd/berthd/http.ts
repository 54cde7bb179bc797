// The optional HTTP endpoints: [metrics] address (TCP host:port, Prometheus text at /v1/metrics,
// as containerd) and [debug] address (a unix socket with /debug/vars, process stats as JSON).
import { chmodSync, chownSync, mkdirSync, unlinkSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { dirname } from "node:path";
import type { Metrics } from "../../core/metrics.js";
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

export async function serveMetrics(address: string, metrics: Metrics): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.url === "/v1/metrics" || req.url === "/metrics") {
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
      res.end(metrics.render());
      return;
    }
    res.writeHead(404).end("not found\n");
  });
  await listen(server, address);
  return server;
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
