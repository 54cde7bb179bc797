// stageLayer on a worker thread. Extracting a layer is CPU work on the thread that runs it (tar
// parsing, hashing, one system call per file); on the daemon's event loop every layer of a pull
// would take turns there. A worker per large layer lets layers extract in parallel on separate
// cores while the event loop keeps downloading. Small layers stay on the event loop: a worker's
// start-up (~30 ms) costs more than they take.
import { Worker } from "node:worker_threads";
import { BerthError, type ErrorKind } from "../../base/errdefs.js";
import { type Level, type Logger, nopLogger } from "../../base/log.js";
import type { ApplyMode } from "../diff/apply.js";
import type { Descriptor } from "../images/media.js";
import { type StagedLayer, stageLayer } from "./stage.js";
import type { StageJob, ToMain, ToWorker } from "./stage-protocol.js";

/** Layers at least `workerMinLayer` bytes big (compressed) are extracted on a worker thread. */
export const stageTuning = { workerMinLayer: 4 << 20 };
/** Bytes sent to a worker and not yet taken in, before the sender waits. */
const IN_FLIGHT_MAX = 8 << 20;

const LEVELS: Level[] = ["trace", "debug", "info", "warn", "error"];
const workerUrl = new URL("./stage-worker.js", import.meta.url);

export interface StageOptions {
  signal?: AbortSignal;
  log?: Logger;
  verify?: boolean;
  /** Extract on this thread whatever the size (tests, or where threads are unwanted). */
  inline?: boolean;
  /**
   * `src` hands over its chunks: nothing else uses them once yielded, so a chunk that is a whole
   * ArrayBuffer moves to the worker instead of being copied.
   */
  giveChunks?: boolean;
}

/** stageLayer's contract, run on a worker thread for large layers. */
export async function stageLayerThreaded(
  dir: string,
  src: AsyncIterable<Buffer>,
  desc: Descriptor,
  mode: ApplyMode,
  opts: StageOptions = {},
): Promise<StagedLayer> {
  if (opts.inline || desc.size < stageTuning.workerMinLayer) return stageLayer(dir, src, desc, mode, opts);
  const log = opts.log ?? nopLogger;
  const job: StageJob = {
    dir,
    desc: { mediaType: desc.mediaType, digest: desc.digest, size: desc.size },
    mode,
    verify: opts.verify !== false,
    logLevel: LEVELS.find((l) => log.enabled(l)) ?? "panic",
  };
  const worker = new Worker(workerUrl, { workerData: job });
  const exited = new Promise<void>((resolve) => worker.once("exit", () => resolve()));
  // Terminating a worker while it still loads its modules can abort the whole process (a native
  // addon's initialisation throwing into an environment being torn down: "napi_throw" FATAL
  // ERROR), so the finally below waits for this first.
  let markLoaded!: () => void;
  const loaded = new Promise<void>((resolve) => {
    markLoaded = resolve;
  });
  worker.once("exit", () => markLoaded());
  let inFlight = 0;
  let wakeSender: (() => void) | undefined;
  let settled = false;
  /** The worker is done: a sender waiting for room must stop waiting (no ack will come). */
  const settle = () => {
    settled = true;
    const w = wakeSender;
    wakeSender = undefined;
    w?.();
  };
  const result = new Promise<StagedLayer>((resolve, reject) => {
    worker.on("message", (m: ToMain) => {
      switch (m.type) {
        case "ready":
          markLoaded();
          return;
        case "ack": {
          inFlight -= m.bytes;
          const w = wakeSender;
          wakeSender = undefined;
          w?.();
          return;
        }
        case "log": {
          const level = (m.level === "warning" ? "warn" : m.level) as Level;
          if (LEVELS.includes(level)) log[level as "warn"](m.msg, m.fields);
          return;
        }
        case "done":
          settle();
          resolve({ dir, diffId: m.diffId, implicitDirs: new Set(m.implicitDirs) });
          return;
        case "error": {
          settle();
          const e: Error & { code?: string } = m.kind
            ? new BerthError(m.kind as ErrorKind)
            : new Error(m.message);
          e.message = m.message;
          e.name = m.name;
          // the errno (ENOSPC, …) decides the gRPC code the client gets
          if (m.code !== undefined) e.code = m.code;
          reject(e);
        }
      }
    });
    worker.once("error", (err) => {
      settle();
      reject(err);
    });
    worker.once("exit", (code) => {
      if (!settled) reject(new Error(`layer extraction thread exited with code ${code}`));
      settle();
    });
  });
  result.catch(() => {});
  const send = (m: ToWorker) => worker.postMessage(m);
  const feeding = (async () => {
    try {
      for await (const c of src) {
        if (settled) break; // the worker is done (or failed): stop reading
        opts.signal?.throwIfAborted();
        const n = c.length; // before a transfer detaches it
        const whole = c.byteOffset === 0 && c.byteLength === c.buffer.byteLength;
        if (opts.giveChunks && whole && c.buffer instanceof ArrayBuffer) {
          const data = new Uint8Array(c.buffer);
          worker.postMessage({ type: "chunk", data } satisfies ToWorker, [c.buffer]);
        } else send({ type: "chunk", data: c }); // cloned: the caller may still use it
        inFlight += n;
        while (inFlight > IN_FLIGHT_MAX && !settled)
          await new Promise<void>((r) => {
            wakeSender = r;
          });
      }
      if (!settled) send({ type: "end" });
    } catch (err) {
      if (!settled) send({ type: "fail", message: err instanceof Error ? err.message : String(err) });
      throw err;
    }
  })();
  try {
    const [staged] = await Promise.all([result, feeding]);
    return staged;
  } catch (err) {
    // The feeder's own error says more than the worker's echo of it. It has failed already if
    // its failure is what the worker echoes; else it may be waiting for a chunk that never
    // comes (the download stalled on this very extraction), so it is not waited for.
    const fed = await Promise.race([
      feeding.then(
        () => undefined,
        (e: unknown) => e,
      ),
      new Promise<undefined>((r) => setImmediate(() => r(undefined))),
    ]);
    throw fed ?? err;
  } finally {
    // the staging dir is removed by the caller: the thread must have stopped writing first (and
    // a finished one would idle on its message port forever)
    await loaded;
    await worker.terminate();
    await exited;
  }
}
