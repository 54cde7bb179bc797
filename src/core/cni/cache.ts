// The on-disk result cache: one JSON file per (network, container, interface) holding the ADD
// result, the list config and the arguments it was added with. DEL and CHECK read it back as
// prevResult, and it outlives the daemon, so a DEL after a restart still gets what ADD returned
// (and the config it was added with, even if the conf dir changed meanwhile).
import { randomBytes } from "node:crypto";
import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import { readdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import type { CapabilityArgs } from "./types.js";

export const CACHE_KIND = "cniCacheV1";

export interface CacheEntry {
  kind: typeof CACHE_KIND;
  containerId: string;
  /** The network config list, base64 (the bytes ADD ran with). */
  config: string;
  ifName: string;
  networkName: string;
  cniArgs: [string, string][];
  capabilityArgs: CapabilityArgs;
  /** The raw final result of the list, as the last plugin printed it. */
  result: unknown;
}

/** Keeps file names to one path component whatever a network or interface is called. */
function safe(s: string): string {
  return s.replace(/[^A-Za-z0-9_.@:+-]/g, "_");
}

export class ResultCache {
  constructor(readonly dir: string) {}

  private get resultsDir(): string {
    return path.join(this.dir, "results");
  }

  file(network: string, containerId: string, ifName: string): string {
    return path.join(this.resultsDir, `${safe(network)}-${safe(containerId)}-${safe(ifName)}`);
  }

  async get(network: string, containerId: string, ifName: string): Promise<CacheEntry | undefined> {
    return readEntry(this.file(network, containerId, ifName));
  }

  /**
   * Synchronous, as every ADD waits for it before it returns: with the promise API each step
   * waited for a turn of the busy event loop (a median of ~90 ms per ADD with eight pods starting
   * at once); the file is a few hundred bytes.
   */
  put(e: Omit<CacheEntry, "kind">): void {
    mkdirSync(this.resultsDir, { recursive: true, mode: 0o700 });
    const target = this.file(e.networkName, e.containerId, e.ifName);
    const tmp = `${target}.tmp-${randomBytes(4).toString("hex")}`;
    writeFileSync(tmp, JSON.stringify({ kind: CACHE_KIND, ...e }), { mode: 0o600 });
    renameSync(tmp, target);
  }

  async delete(network: string, containerId: string, ifName: string): Promise<void> {
    await rm(this.file(network, containerId, ifName), { force: true });
  }

  /** Every cached entry of one container (used to tear down networks no longer configured). */
  async forContainer(containerId: string): Promise<CacheEntry[]> {
    let names: string[];
    try {
      names = await readdir(this.resultsDir);
    } catch {
      return [];
    }
    const marker = `-${safe(containerId)}-`;
    const out: CacheEntry[] = [];
    for (const n of names) {
      if (!n.includes(marker) || n.includes(".tmp-")) continue;
      const e = await readEntry(path.join(this.resultsDir, n));
      if (e && e.containerId === containerId) out.push(e);
    }
    return out;
  }
}

async function readEntry(file: string): Promise<CacheEntry | undefined> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch {
    return undefined;
  }
  try {
    const o = JSON.parse(text) as CacheEntry;
    return o && o.kind === CACHE_KIND ? o : undefined;
  } catch {
    // A torn or foreign file is as good as none: DEL then runs without prevResult.
    return undefined;
  }
}
