// `berth gc why`'s lines. Apart from why.ts, which reads the metadata database, so that the
// client loads neither it nor SQLite.
import { GC_ROOT } from "./labels.js";
import type { WhyLink } from "./why.js";

/** One chain as a line: `image X → manifest sha256:… → layer sha256:…`, label edges named. */
export function formatChain(c: {
  rootReason: string;
  links: Pick<WhyLink, "name" | "snapshotter" | "role" | "via">[] & { kind: string }[];
}): string {
  const parts: string[] = [];
  for (const l of c.links) {
    const name = l.kind === "snapshot" && l.snapshotter ? `${l.snapshotter}/${l.name}` : l.name;
    let text = `${l.role} ${name}`;
    if (l.via.startsWith("containerd.io/")) text += ` [${l.via}]`;
    parts.push(text);
  }
  let line = parts.join(" → ");
  if (c.rootReason === GC_ROOT) line += ` (root: ${GC_ROOT} label)`;
  return line;
}
