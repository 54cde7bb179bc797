// stageLayer on a worker thread. Extracting a layer is CPU work on the thread that runs it (tar
// parsing, hashing, one system call per file); on the daemon's event loop every layer of a pull
// would take turns there. Worker threads let layers extract in parallel on separate cores while
// the event loop keeps downloading. Small layers stay on the event loop.
//
// The threads are pooled: a thread that finished a layer takes the next one, and up to
// `idleWorkers` of them wait `idleMs` for more before they exit. A new thread costs ~70 ms of CPU
// to start (Node's bootstrap and this module's code) and runs the tar code cold until V8 has
// compiled it again: a 6-layer pull paid that for every large layer.
import { availableParallelism } from "node:os";
import type { Worker } from "node:worker_threads";
import { workerThreads } from "../../base/builtin.js";
import { BerthError, type ErrorKind } from "../../base/errdefs.js";
import { type Level, type Logger, nopLogger } from "../../base/log.js";
import type { ApplyMode } from "../diff/apply.js";
import type { Descriptor } from "../images/media.js";
import { givePieces } from "./pieces.js";
import { type StagedLayer, stageLayer } from "./stage.js";
import type { StageJob, ToMain, ToWorker } from "./stage-protocol.js";

export const stageTuning = {
  /** Layers at least this many bytes big (compressed) are extracted on a worker thread. */
  workerMinLayer: 4 << 20,
  /** Threads kept for the next layers once they are done with theirs. */
  idleWorkers: 2,
  /** How long an idle thread waits for another layer before it exits. */
  idleMs: 10_000,
  /**
   * Layers extracting on threads at once; the next waits for a thread to finish (its bytes
   * queue in the download's pipe meanwhile). A download ends before its extraction does, so
   * with three downloads at a time a 6-layer pull had five threads at once: each paid its start
   * and ran the tar code cold, on a machine with two cores.
   */
  maxBusy: Math.max(2, availableParallelism()),
  /**
   * The longest a layer waits for a thread before it starts one of its own. Waiting stalls the
   * layer's download once its pipe is full: were that download also feeding a running
   * extraction (a layer shared by two unpacks of one pull), all could wait on each other.
   */
  maxWaitMs: 5_000,
};
/** Bytes sent to a worker and not yet taken in, before the sender waits (see PIPE_HIGH_WATER). */
const IN_FLIGHT_MAX = 4 << 20;

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

/** A staging thread, busy with one job or idle in the pool. */
interface StageThread {
  worker: Worker;
  /** Settles once its modules are loaded (or it is gone): only then may it be terminated. */
  loaded: Promise<void>;
  exited: Promise<void>;
  gone: boolean;
  /** The running job's handlers. */
  onMessage: ((m: ToMain) => void) | undefined;
  onGone: ((err: Error) => void) | undefined;
  idleTimer: NodeJS.Timeout | undefined;
}

const idle: StageThread[] = [];
let nextJobId = 1;
let started = 0;

/** Threads started so far, and those idle in the pool now (for tests and diagnostics). */
export function stageThreadStats(): { started: number; idle: number } {
  return { started, idle: idle.length };
}

function startThread(): StageThread {
  const worker = new (workerThreads().Worker)(workerUrl);
  started++;
  let markLoaded!: () => void;
  const t: StageThread = {
    worker,
    loaded: new Promise<void>((resolve) => {
      markLoaded = resolve;
    }),
    exited: new Promise<void>((resolve) => worker.once("exit", () => resolve())),
    gone: false,
    onMessage: undefined,
    onGone: undefined,
    idleTimer: undefined,
  };
  const lost = (err: Error) => {
    t.gone = true;
    markLoaded();
    dropIdle(t);
    t.onGone?.(err);
  };
  worker.on("message", (m: ToMain) => {
    if (m.type === "ready") markLoaded();
    else if (m.type === "give") givePieces(m.pieces);
    else t.onMessage?.(m);
  });
  worker.once("error", lost);
  worker.once("exit", (code) => lost(new Error(`layer extraction thread exited with code ${code}`)));
  return t;
}

/** Jobs on threads now, and those waiting for one (first come, first served). */
let busy = 0;
const waiting: Array<() => void> = [];

async function acquireSlot(signal: AbortSignal | undefined): Promise<void> {
  if (busy < stageTuning.maxBusy && waiting.length === 0) {
    busy++;
    return;
  }
  await new Promise<void>((resolve, reject) => {
    const go = () => {
      signal?.removeEventListener("abort", onAbort);
      clearTimeout(timer);
      busy++;
      resolve();
    };
    const leave = () => {
      const i = waiting.indexOf(go);
      if (i >= 0) waiting.splice(i, 1);
    };
    const onAbort = () => {
      leave();
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      leave();
      go();
    }, stageTuning.maxWaitMs);
    signal?.addEventListener("abort", onAbort, { once: true });
    waiting.push(go);
  });
}

function releaseSlot(): void {
  busy--;
  while (busy < stageTuning.maxBusy && waiting.length > 0) waiting.shift()?.();
}

function dropIdle(t: StageThread): void {
  clearTimeout(t.idleTimer);
  const i = idle.indexOf(t);
  if (i >= 0) idle.splice(i, 1);
}

function takeThread(): StageThread {
  for (let t = idle.pop(); t; t = idle.pop()) {
    clearTimeout(t.idleTimer);
    if (t.gone) continue;
    t.worker.ref();
    return t;
  }
  return startThread();
}

/**
 * Terminating a thread while it still loads its modules can abort the whole process (a native
 * addon's initialisation throwing into an environment being torn down: "napi_throw" FATAL
 * ERROR), so this waits for the load first.
 */
async function retire(t: StageThread): Promise<void> {
  dropIdle(t);
  await t.loaded;
  await t.worker.terminate();
  await t.exited;
}

/** A thread whose job succeeded waits in the pool (unreferenced: it keeps no process alive). */
function giveBack(t: StageThread): void {
  if (t.gone) return;
  if (idle.length >= stageTuning.idleWorkers) {
    void retire(t);
    return;
  }
  t.worker.unref();
  t.idleTimer = setTimeout(() => void retire(t), stageTuning.idleMs);
  t.idleTimer.unref();
  idle.push(t);
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
  const id = nextJobId++;
  const job: StageJob = {
    dir,
    desc: { mediaType: desc.mediaType, digest: desc.digest, size: desc.size },
    mode,
    verify: opts.verify !== false,
    logLevel: LEVELS.find((l) => log.enabled(l)) ?? "panic",
  };
  opts.signal?.throwIfAborted();
  await acquireSlot(opts.signal);
  try {
    return await runOnThread(takeThread(), id, job, src, opts, log);
  } finally {
    releaseSlot();
  }
}

async function runOnThread(
  t: StageThread,
  id: number,
  job: StageJob,
  src: AsyncIterable<Buffer>,
  opts: StageOptions,
  log: Logger,
): Promise<StagedLayer> {
  const dir = job.dir;
  let inFlight = 0;
  let wakeSender: (() => void) | undefined;
  let settled = false;
  /** The job is over: a sender waiting for room must stop waiting (no ack will come). */
  const settle = () => {
    settled = true;
    const w = wakeSender;
    wakeSender = undefined;
    w?.();
  };
  const result = new Promise<StagedLayer>((resolve, reject) => {
    t.onMessage = (m: ToMain) => {
      if (m.type === "ready" || m.type === "give" || m.id !== id) return;
      switch (m.type) {
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
    };
    t.onGone = (err) => {
      if (settled) return;
      settle();
      reject(err);
    };
    if (t.gone) t.onGone(new Error("layer extraction thread is gone"));
  });
  result.catch(() => {});
  const send = (m: ToWorker, transfer?: ArrayBuffer[]) => t.worker.postMessage(m, transfer);
  send({ type: "job", id, job });
  const feeding = (async () => {
    try {
      for await (const c of src) {
        if (settled) break; // the job is done (or failed): stop reading
        opts.signal?.throwIfAborted();
        const n = c.length; // before a transfer detaches it
        const whole = c.byteOffset === 0 && c.byteLength === c.buffer.byteLength;
        if (opts.giveChunks && whole && c.buffer instanceof ArrayBuffer)
          send({ type: "chunk", id, data: new Uint8Array(c.buffer) }, [c.buffer]);
        else send({ type: "chunk", id, data: c }); // cloned: the caller may still use it
        inFlight += n;
        while (inFlight > IN_FLIGHT_MAX && !settled)
          await new Promise<void>((r) => {
            wakeSender = r;
          });
      }
      if (!settled) send({ type: "end", id });
    } catch (err) {
      if (!settled) send({ type: "fail", id, message: err instanceof Error ? err.message : String(err) });
      throw err;
    }
  })();
  let ok = false;
  try {
    const [staged] = await Promise.all([result, feeding]);
    ok = true;
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
    t.onMessage = undefined;
    t.onGone = undefined;
    // The staging dir is removed by the caller: a thread whose job failed must have stopped
    // writing first, so it is terminated, never reused. A thread that finished is idle.
    if (ok) giveBack(t);
    else await retire(t);
  }
}
