// Leases for the CLI's commands: generated ids in ctr's shape, and a short-lived lease around CLI
// work that creates resources (a new snapshot survives the garbage collector until the container
// that holds it exists), deleted when the work ends.

import { randomBytes } from "node:crypto";
import { GC_EXPIRE } from "../../core/gc/labels.js";
import { Leases } from "../../gen/containerd/services/leases/v1/leases_pb.js";
import type { CliContext } from "./context.js";

/** A lease id like ctr's generated ones: `<nanoseconds of the second>-<4 random chars>`. */
export function randomLeaseId(now = Date.now()): string {
  const nanos = (now % 1000) * 1_000_000 + Math.floor(Math.random() * 1_000_000);
  return `${nanos}-${randomBytes(3).toString("base64url")}`;
}

/** Runs `fn` under a new lease that expires after a day if berth dies before deleting it. */
export async function withLease<T>(ctx: CliContext, fn: (lease: string) => Promise<T>): Promise<T> {
  const leases = await ctx.client(Leases);
  const id = `berth-${Date.now()}-${randomBytes(6).toString("hex")}`;
  const expire = new Date(Date.now() + 24 * 3600_000).toISOString().replace(/\.\d+Z$/, "Z");
  await leases.create({ id, labels: { [GC_EXPIRE]: expire } }, ctx.call());
  try {
    return await fn(id);
  } finally {
    await leases.delete({ id }, ctx.call()).catch(() => {});
  }
}
