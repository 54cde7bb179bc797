// Addresses for the networks tests and benchmarks make themselves: a /24 under a prefix that no
// route on this host covers yet, so the subnet (and everything sent into it) is the test's own.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** Third octets X of `<prefix>.X.0/24` that no host route mentions: `count` of them, random order. */
export function freeSubnetOctets(prefix: string, count = 1): number[] {
  const routes = execFileSync("ip", ["-4", "route", "show", "table", "all"], { encoding: "utf8" });
  const out: number[] = [];
  for (let i = 0; i < 500 && out.length < count; i++) {
    const x = 1 + (randomBytes(1)[0]! % 250);
    if (!routes.includes(`${prefix}.${x}.`) && !out.includes(x)) out.push(x);
  }
  if (out.length < count) throw new Error(`no free ${prefix}.X.0/24 subnet`);
  return out;
}

export interface BridgeNetwork {
  /** The conflist's directory (CRI `conf_dir`) and file name in it. */
  confDir: string;
  file: string;
  /** The network's name in the conflist. */
  name: string;
  bridge: string;
  /** The pods' subnet, "10.X.Y.0/24". */
  subnet: string;
  /** host-local's data directory (where its leases can be checked). */
  ipamDir: string;
  /** A default route into the pod (pods that answer the host need none). */
  defaultRoute?: boolean;
  /** The portmap plugin after the bridge, for hostPort mappings. */
  portmap?: boolean;
}

/** Writes a CNI conflist of the bridge plugin with host-local addresses (and portmap when asked). */
export function writeBridgeConflist(n: BridgeNetwork): string {
  mkdirSync(n.confDir, { recursive: true });
  const file = join(n.confDir, n.file);
  writeFileSync(
    file,
    JSON.stringify({
      cniVersion: "1.0.0",
      name: n.name,
      plugins: [
        {
          type: "bridge",
          bridge: n.bridge,
          isGateway: true,
          ipMasq: false,
          ipam: {
            type: "host-local",
            dataDir: n.ipamDir,
            ranges: [[{ subnet: n.subnet }]],
            ...(n.defaultRoute ? { routes: [{ dst: "0.0.0.0/0" }] } : {}),
          },
        },
        ...(n.portmap ? [{ type: "portmap", capabilities: { portMappings: true } }] : []),
      ],
    }),
  );
  return file;
}
