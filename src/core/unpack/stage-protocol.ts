// Messages between the pull pipeline and a staging worker (stage-thread.ts, stage-worker.ts).
import type { ApplyMode } from "../diff/apply.js";
import type { Descriptor } from "../images/media.js";

/** What a worker is started with. */
export interface StageJob {
  dir: string;
  desc: Descriptor;
  mode: ApplyMode;
  verify: boolean;
  logLevel: string;
}

export type ToWorker =
  | { type: "chunk"; data: Uint8Array }
  | { type: "end" }
  | { type: "fail"; message: string };

export type ToMain =
  /** The worker's modules (native addons among them) are loaded: it may be terminated now. */
  | { type: "ready" }
  | { type: "ack"; bytes: number }
  | { type: "log"; level: string; msg: string; fields: Record<string, unknown> }
  | { type: "done"; diffId: string; implicitDirs: string[] }
  | { type: "error"; name: string; message: string; kind?: string; code?: string };
