// Worker-thread side of stageLayerThreaded (stage-thread.ts): extracts layers into their staging
// directories, one job at a time, for as long as the pool keeps the thread. A job's compressed
// bytes arrive as messages; every chunk taken in is acknowledged, so the sender keeps only a
// bounded amount in flight, and the download's pieces go back once decompressed (pieces.ts).
// Decompression, tar parsing and the file writes run here, off the daemon's event loop, so layers
// really extract in parallel on several cores.
import { parentPort } from "node:worker_threads";
import { BerthError } from "../../base/errdefs.js";
import { createLogger, type Fields, type Level } from "../../base/log.js";
import { whenConsumed } from "../diff/compression.js";
import { PIECE_SIZE } from "./pieces.js";
import { stageLayer } from "./stage.js";
import type { StageJob, ToMain, ToWorker } from "./stage-protocol.js";

const port = parentPort;
if (!port) throw new Error("stage-worker.ts runs only as a worker thread");
port.postMessage({ type: "ready" } satisfies ToMain);

/** The job being extracted: its chunks not yet taken, and whether its sender ended or failed. */
interface Current {
  id: number;
  queue: Uint8Array[];
  ended: boolean;
  failure: string | undefined;
  wake: (() => void) | undefined;
}
let current: Current | undefined;

port.on("message", (m: ToWorker) => {
  if (m.type === "job") {
    current = { id: m.id, queue: [], ended: false, failure: undefined, wake: undefined };
    void run(current, m.job);
    return;
  }
  const c = current;
  if (!c || m.id !== c.id) return; // a finished job's late chunks: nobody reads them
  if (m.type === "chunk") c.queue.push(m.data);
  else if (m.type === "end") c.ended = true;
  else c.failure = m.message;
  const w = c.wake;
  c.wake = undefined;
  w?.();
});

/** Pieces the decompressor is done with, moved back to the daemon's event loop a few at a time. */
let done: ArrayBuffer[] = [];
const GIVE_BATCH = 4;

function giveBack(piece: ArrayBuffer): void {
  done.push(piece);
  // between jobs nothing else would send them
  if (done.length >= GIVE_BATCH || current === undefined) flushGiven();
}

function flushGiven(): void {
  if (done.length === 0) return;
  const pieces = done;
  done = [];
  port!.postMessage({ type: "give", pieces } satisfies ToMain, pieces);
}

async function* chunks(c: Current): AsyncGenerator<Buffer> {
  for (;;) {
    if (c.failure !== undefined) throw new Error(c.failure);
    const d = c.queue.shift();
    if (d) {
      port!.postMessage({ type: "ack", id: c.id, bytes: d.byteLength } satisfies ToMain);
      const b = Buffer.from(d.buffer, d.byteOffset, d.byteLength);
      // a whole piece of the fetcher's (pieces.ts) goes back once the decompressor took it in
      if (d.byteOffset === 0 && d.buffer.byteLength === PIECE_SIZE && d.byteLength === PIECE_SIZE) {
        const piece = d.buffer as ArrayBuffer;
        whenConsumed(b, () => giveBack(piece));
      }
      yield b;
      continue;
    }
    if (c.ended) return;
    await new Promise<void>((r) => {
      c.wake = r;
    });
  }
}

/** Log lines go back to the daemon's logger, at the level the job asked for. */
function jobLogger(id: number, level: string) {
  return createLogger({
    level: level as Level,
    format: "json",
    write: (line: string) => {
      try {
        const { level, msg, ...fields } = JSON.parse(line) as { level: string; msg: string } & Fields;
        delete fields.time;
        port!.postMessage({ type: "log", id, level, msg, fields } satisfies ToMain);
      } catch {
        // a line that is not ours to forward
      }
    },
  });
}

async function run(c: Current, job: StageJob): Promise<void> {
  try {
    const staged = await stageLayer(job.dir, chunks(c), job.desc, job.mode, {
      verify: job.verify,
      log: jobLogger(c.id, job.logLevel),
    });
    port!.postMessage({
      type: "done",
      id: c.id,
      diffId: staged.diffId,
      implicitDirs: [...staged.implicitDirs],
    } satisfies ToMain);
  } catch (err) {
    const e = err as Error;
    port!.postMessage({
      type: "error",
      id: c.id,
      name: e?.name ?? "Error",
      message: e?.message ?? String(err),
      kind: err instanceof BerthError ? err.kind : undefined,
      code:
        typeof (e as NodeJS.ErrnoException)?.code === "string"
          ? (e as NodeJS.ErrnoException).code
          : undefined,
    } satisfies ToMain);
  } finally {
    if (current === c) current = undefined;
    c.queue.length = 0;
    flushGiven();
  }
}
