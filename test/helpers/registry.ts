// Start the real Docker distribution registry (Debian's docker-registry) on a loopback port with
// its storage in a temp dir, wait until /v2/ answers, and stop it again by PID. No auth, no TLS:
// clients pull from it with --plain-http. Variants: htpasswd Basic auth, TLS with a given
// certificate (the test makes its own CA).
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { createServer, type Socket } from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { makeTempDir, onExitBeforeRemoval, onShutdown, removeTempDir } from "./tmp.js";

export const REGISTRY_BIN = "/usr/bin/docker-registry";

export interface Registry {
  /** `127.0.0.1:<port>`: the host part of image references. */
  readonly host: string;
  /** `http://127.0.0.1:<port>` (`https://` with TLS). */
  readonly url: string;
  readonly pid: number;
  /** Temp dir holding the config and the storage root. */
  readonly dir: string;
  logs(): string;
  /** SIGTERM (SIGKILL after 10 s), wait for the exit, remove the temp dir. */
  cleanup(): Promise<void>;
}

/** Registries started here and still running, by PID. */
const live = new Map<number, ChildProcess>();

onShutdown(async () => {
  await Promise.all(
    [...live.values()].map((child) => {
      const gone = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGKILL");
      return gone;
    }),
  );
});

onExitBeforeRemoval(() => {
  for (const pid of live.keys()) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
});

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", resolve);
  });
  const addr = srv.address();
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  if (addr === null || typeof addr === "string") throw new Error("freePort: no TCP address");
  return addr.port;
}

export interface RegistryOptions {
  timeoutMs?: number;
  /** An htpasswd file (bcrypt entries): the registry asks for Basic auth. */
  htpasswd?: string;
  /** Serve HTTPS with this certificate and key (PEM files). */
  tls?: { certificate: string; key: string };
}

/** GET /v2/ once; the status (200, or 401 when auth is on) or a thrown error. */
function probe(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const u = new URL(`${url}/v2/`);
    const req = (u.protocol === "https:" ? httpsRequest : httpRequest)(
      u,
      { method: "GET", rejectUnauthorized: false, timeout: 2000 },
      (res) => {
        res.resume();
        res.once("end", () => resolve(res.statusCode ?? 0));
      },
    );
    req.once("timeout", () => req.destroy(new Error("timeout")));
    req.once("error", reject);
    req.end();
  });
}

/** An htpasswd line (bcrypt) for user:password, from apache2-utils' htpasswd or python3's crypt. */
export function htpasswdLine(user: string, password: string): string {
  const tools: [string, string[]][] = [
    ["htpasswd", ["-Bbn", user, password]],
    [
      "python3",
      [
        "-W",
        "ignore",
        "-c",
        "import crypt,sys; print(sys.argv[1]+':'+crypt.crypt(sys.argv[2], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
        user,
        password,
      ],
    ],
  ];
  for (const [bin, args] of tools) {
    try {
      const out = execFileSync(bin, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
      if (/^[^:]+:\$2[aby]\$/.test(out)) return out;
    } catch {
      // try the next tool
    }
  }
  throw new Error("no bcrypt htpasswd tool: install apache2-utils (htpasswd)");
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<Registry> {
  if (!existsSync(REGISTRY_BIN))
    throw new Error(`${REGISTRY_BIN} is not installed (Debian package docker-registry)`);
  const dir = await makeTempDir("registry");
  const storage = path.join(dir, "storage");
  const configPath = path.join(dir, "config.yml");
  // A port taken between freePort and the registry's bind shows up as an early exit: retry.
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const host = `127.0.0.1:${port}`;
    await writeFile(
      configPath,
      [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        `    rootdirectory: ${JSON.stringify(storage)}`,
        "  delete:",
        "    enabled: true",
        ...(opts.htpasswd
          ? ["auth:", "  htpasswd:", "    realm: berth-test", `    path: ${JSON.stringify(opts.htpasswd)}`]
          : []),
        "http:",
        `  addr: ${host}`,
        ...(opts.tls
          ? [
              "  tls:",
              `    certificate: ${JSON.stringify(opts.tls.certificate)}`,
              `    key: ${JSON.stringify(opts.tls.key)}`,
            ]
          : []),
        "",
      ].join("\n"),
    );
    const child = spawn(REGISTRY_BIN, ["serve", configPath], { stdio: ["ignore", "pipe", "pipe"] });
    if (child.pid === undefined) {
      const err = await new Promise<Error>((resolve) => child.once("error", resolve));
      await removeTempDir(dir);
      throw new Error(`cannot start ${REGISTRY_BIN}: ${err.message}`);
    }
    const pid = child.pid;
    live.set(pid, child);
    child.unref();
    (child.stdout as unknown as Socket).unref();
    (child.stderr as unknown as Socket).unref();
    let output = "";
    const append = (c: Buffer) => {
      output = (output + c.toString("utf8")).slice(-1 << 20);
    };
    child.stdout!.on("data", append);
    child.stderr!.on("data", append);
    let done = false;
    const exited = new Promise<void>((resolve) =>
      child.once("exit", () => {
        done = true;
        live.delete(pid);
        resolve();
      }),
    );
    const stop = async () => {
      if (done) return;
      try {
        process.kill(pid, "SIGTERM");
      } catch {
        // raced with the exit
      }
      const timer = setTimeout(() => {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // gone
        }
      }, 10_000);
      await exited;
      clearTimeout(timer);
    };
    const url = `${opts.tls ? "https" : "http"}://${host}`;
    const deadline = Date.now() + (opts.timeoutMs ?? 20_000);
    let last = "";
    while (!done && Date.now() < deadline) {
      try {
        const status = await probe(url);
        if (status === 200 || (status === 401 && opts.htpasswd)) {
          return {
            host,
            url,
            pid,
            dir,
            logs: () => output,
            cleanup: async () => {
              await stop();
              await removeTempDir(dir);
            },
          };
        }
        last = `HTTP ${status}`;
      } catch (err) {
        last = (err as Error).message;
      }
      await sleep(50);
    }
    await stop();
    if (attempt < 3 && /address already in use/.test(output)) continue;
    await removeTempDir(dir);
    throw new Error(`docker-registry did not answer on ${url}/v2/ (${last})\n${output.slice(-4000)}`);
  }
}
