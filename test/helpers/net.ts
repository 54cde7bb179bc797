// Addresses for the networks tests and benchmarks make themselves: a /24 under a prefix that no
// route on this host covers yet, so the subnet (and everything sent into it) is the test's own.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";

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
