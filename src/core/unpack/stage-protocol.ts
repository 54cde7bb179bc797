// Messages between the pull pipeline and its staging workers (stage-thread.ts, stage-worker.ts).
// A worker extracts one layer at a time and is reused for the next: every message about a job
// carries the job's number, so what arrives late for a finished job is recognised and dropped.
import type { ApplyMode } from "../diff/apply.js";
import type { Descriptor } from "../images/media.js";

/** One layer to extract. */
export interface StageJob {
  dir: string;
  desc: Descriptor;
  mode: ApplyMode;
  verify: boolean;
  logLevel: string;
}

export type ToWorker =
  | { type: "job"; id: number; job: StageJob }
  | { type: "chunk"; id: number; data: Uint8Array }
  | { type: "end"; id: number }
  | { type: "fail"; id: number; message: string };

export type ToMain =
  /** The worker's modules (native addons among them) are loaded: it may be terminated now. */
  | { type: "ready" }
  | { type: "ack"; id: number; bytes: number }
  /** Input pieces (pieces.ts) the worker's decompressor is done with, moved back for reuse. */
  | { type: "give"; pieces: ArrayBuffer[] }
  | { type: "log"; id: number; level: string; msg: string; fields: Record<string, unknown> }
  | { type: "done"; id: number; diffId: string; implicitDirs: string[] }
  | { type: "error"; id: number; name: string; message: string; kind?: string; code?: string };
