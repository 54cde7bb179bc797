// Which shim a task runs in. containerd-shim-runc-v2 puts a task into the shim of a group when its
// spec carries a group annotation (the first of these that is set), else into a shim of its own
// (a group of one, named by the task's id); it listens on a socket derived from the namespace and
// that group, and its `start` answers the running shim's address when the socket is taken. That
// is how the CRI runs all containers of a pod in the pause container's shim.
import { Buffer } from "node:buffer";

/** The runtime whose shim groups tasks this way. */
export const GROUPING_RUNTIME = "io.containerd.runc.v2";

/** The annotations the runc v2 shim reads, in the order it reads them. */
export const GROUP_ANNOTATIONS = ["io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"] as const;

/** The group a task with this spec (its config.json bytes) and id belongs to. */
export function shimGroupOf(spec: Uint8Array | undefined, id: string): string {
  if (!spec) return id;
  const b = Buffer.from(spec.buffer, spec.byteOffset, spec.byteLength);
  // most specs name no group: skip parsing them
  if (!GROUP_ANNOTATIONS.some((a) => b.includes(a))) return id;
  let annotations: unknown;
  try {
    annotations = (JSON.parse(b.toString("utf8")) as { annotations?: unknown })?.annotations;
  } catch {
    return id; // the shim will refuse the spec itself
  }
  if (typeof annotations !== "object" || annotations === null) return id;
  for (const a of GROUP_ANNOTATIONS) {
    const v = (annotations as Record<string, unknown>)[a];
    if (typeof v === "string") return v;
  }
  return id;
}
