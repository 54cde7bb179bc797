// CNI version strings and result conversion. Plugins print results in the cniVersion they were
// asked for; the runtime reads every version from 0.1.0 to 1.0.0 into one (1.0) shape.
import type { CniDNS, CniInterface, CniIPConfig, CniResult, CniRoute } from "./types.js";

/** Compares two dotted versions numerically (missing parts count as 0). */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map((x) => Number.parseInt(x, 10) || 0);
  const pb = b.split(".").map((x) => Number.parseInt(x, 10) || 0);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return 0;
}

/** CHECK exists from spec 0.4.0 on; older lists never get it. */
export function supportsCheck(cniVersion: string): boolean {
  return compareVersions(cniVersion || "0.1.0", "0.4.0") >= 0;
}

/** From 0.4.0 on, DEL receives the cached ADD result as prevResult. */
export function supportsPrevResultOnDel(cniVersion: string): boolean {
  return supportsCheck(cniVersion);
}

function strings(v: unknown): string[] | undefined {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : undefined;
}

function dnsOf(v: unknown): CniDNS {
  if (!v || typeof v !== "object") return {};
  const o = v as Record<string, unknown>;
  const d: CniDNS = {};
  const ns = strings(o["nameservers"]);
  if (ns) d.nameservers = ns;
  if (typeof o["domain"] === "string") d.domain = o["domain"];
  const s = strings(o["search"]);
  if (s) d.search = s;
  const opts = strings(o["options"]);
  if (opts) d.options = opts;
  return d;
}

function routesOf(v: unknown): CniRoute[] {
  if (!Array.isArray(v)) return [];
  const out: CniRoute[] = [];
  for (const r of v) {
    if (!r || typeof r !== "object" || typeof r.dst !== "string") continue;
    out.push(typeof r.gw === "string" ? { dst: r.dst, gw: r.gw } : { dst: r.dst });
  }
  return out;
}

/**
 * Reads a plugin's result JSON (any spec version) into the 1.0 shape. Before 0.3.0 a result had
 * `ip4`/`ip6` objects and no interfaces; from 0.3.0 on it has `interfaces` and `ips`.
 */
export function parseResult(raw: unknown, fallbackVersion: string): CniResult {
  if (!raw || typeof raw !== "object") throw new Error("plugin result is not a JSON object");
  const o = raw as Record<string, unknown>;
  const cniVersion = typeof o["cniVersion"] === "string" ? o["cniVersion"] : fallbackVersion;
  const result: CniResult = { cniVersion, interfaces: [], ips: [], routes: [], dns: dnsOf(o["dns"]) };
  if (compareVersions(cniVersion || "0.1.0", "0.3.0") < 0) {
    for (const key of ["ip4", "ip6"]) {
      const ipc = o[key] as Record<string, unknown> | undefined;
      if (!ipc || typeof ipc.ip !== "string") continue;
      const entry: CniIPConfig = { address: ipc.ip };
      if (typeof ipc.gateway === "string") entry.gateway = ipc.gateway;
      result.ips.push(entry);
      result.routes.push(...routesOf(ipc.routes));
    }
    return result;
  }
  if (Array.isArray(o["interfaces"])) {
    for (const i of o["interfaces"]) {
      if (!i || typeof i !== "object" || typeof i.name !== "string") continue;
      const iface: CniInterface = { name: i.name };
      if (typeof i.mac === "string" && i.mac !== "") iface.mac = i.mac;
      if (typeof i.sandbox === "string" && i.sandbox !== "") iface.sandbox = i.sandbox;
      result.interfaces.push(iface);
    }
  }
  if (Array.isArray(o["ips"])) {
    for (const ip of o["ips"]) {
      if (!ip || typeof ip !== "object" || typeof ip.address !== "string") continue;
      const entry: CniIPConfig = { address: ip.address };
      if (typeof ip.gateway === "string") entry.gateway = ip.gateway;
      if (typeof ip.interface === "number") entry.interface = ip.interface;
      result.ips.push(entry);
    }
  }
  result.routes = routesOf(o["routes"]);
  return result;
}
