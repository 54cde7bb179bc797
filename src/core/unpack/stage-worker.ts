// Worker-thread side of stageLayerThreaded (stage-thread.ts): extracts one layer into its staging
// directory. The compressed bytes arrive as messages; every chunk taken in is acknowledged, so
// the sender keeps only a bounded amount in flight. Tar parsing and the file writes run here, off
// the daemon's event loop, so layers really extract in parallel on several cores.
import { parentPort, workerData } from "node:worker_threads";
import { BerthError } from "../../base/errdefs.js";
import { createLogger, type Fields, type Level } from "../../base/log.js";
import { stageLayer } from "./stage.js";
import type { StageJob, ToMain, ToWorker } from "./stage-protocol.js";

const port = parentPort;
if (!port) throw new Error("stage-worker.ts runs only as a worker thread");
const job = workerData as StageJob;
port.postMessage({ type: "ready" } satisfies ToMain);

const queue: Uint8Array[] = [];
let ended = false;
let failure: string | undefined;
let wake: (() => void) | undefined;

port.on("message", (m: ToWorker) => {
  if (m.type === "chunk") queue.push(m.data);
  else if (m.type === "end") ended = true;
  else failure = m.message;
  const w = wake;
  wake = undefined;
  w?.();
});

async function* chunks(): AsyncGenerator<Buffer> {
  for (;;) {
    if (failure !== undefined) throw new Error(failure);
    const c = queue.shift();
    if (c) {
      port!.postMessage({ type: "ack", bytes: c.byteLength } satisfies ToMain);
      yield Buffer.from(c.buffer, c.byteOffset, c.byteLength);
      continue;
    }
    if (ended) return;
    await new Promise<void>((r) => {
      wake = r;
    });
  }
}

// Log lines go back to the daemon's logger, at its level.
const log = createLogger({
  level: job.logLevel as Level,
  format: "json",
  write: (line: string) => {
    try {
      const { level, msg, ...fields } = JSON.parse(line) as { level: string; msg: string } & Fields;
      delete fields.time;
      port.postMessage({ type: "log", level, msg, fields } satisfies ToMain);
    } catch {
      // a line that is not ours to forward
    }
  },
});

try {
  const staged = await stageLayer(job.dir, chunks(), job.desc, job.mode, { verify: job.verify, log });
  port.postMessage({
    type: "done",
    diffId: staged.diffId,
    implicitDirs: [...staged.implicitDirs],
  } satisfies ToMain);
} catch (err) {
  const e = err as Error;
  port.postMessage({
    type: "error",
    name: e?.name ?? "Error",
    message: e?.message ?? String(err),
    kind: err instanceof BerthError ? err.kind : undefined,
    code:
      typeof (e as NodeJS.ErrnoException)?.code === "string" ? (e as NodeJS.ErrnoException).code : undefined,
  } satisfies ToMain);
}
