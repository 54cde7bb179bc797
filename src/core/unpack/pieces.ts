// The memory a download passes through on its way to an extraction thread. A pull receives its
// layers into fresh memory, and on this VM the first touch of every 4 KiB page is a fault that
// costs microseconds: ~0.4 s of the event loop's CPU for the 110 MB of the benchmark's zstd set
// (docs/performance.md, findings 47, 60 and 61). So the fetcher copies what the network brings
// into pieces of PIECE_SIZE taken from here, an extraction thread hands each piece back once its
// decompressor has taken the bytes in (stage-worker.ts), and the next copy reuses it: memory
// already touched. The pool lets go of its pieces once no pull has used it for a while.

/** Size of a piece: the fetcher's write size, and a whole ArrayBuffer, so it can move to a thread. */
export const PIECE_SIZE = 1 << 20;
/** Pieces kept for reuse (the in-flight limit of two extracting layers, and the pipes between). */
const POOL_MAX = 32;
/** An idle pool is dropped after this long, its memory left to the garbage collector. */
const IDLE_MS = 5_000;

const pool: ArrayBuffer[] = [];
let idleTimer: NodeJS.Timeout | undefined;

function touch(): void {
  if (idleTimer) idleTimer.refresh();
  else {
    idleTimer = setTimeout(() => {
      pool.length = 0;
      idleTimer = undefined;
    }, IDLE_MS);
    idleTimer.unref();
  }
}

/** A piece to fill: a used one when there is one. */
export function takePiece(): ArrayBuffer {
  touch();
  return pool.pop() ?? new ArrayBuffer(PIECE_SIZE);
}

/** Pieces nothing uses any more (their contents are garbage from now on). */
export function givePieces(pieces: readonly ArrayBuffer[]): void {
  touch();
  for (const p of pieces) if (p.byteLength === PIECE_SIZE && pool.length < POOL_MAX) pool.push(p);
}

/** Pieces in the pool now (tests). */
export function pooledPieces(): number {
  return pool.length;
}

/**
 * The bytes of `src` in pieces of PIECE_SIZE (the last may be shorter). A piece yielded is the
 * caller's: it goes back with givePieces, or is left to the garbage collector.
 */
export async function* intoPieces(
  src: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
): AsyncGenerator<Buffer> {
  let piece: Buffer | undefined;
  let at = 0;
  for await (const c of src) {
    for (let off = 0; off < c.length; ) {
      piece ??= Buffer.from(takePiece());
      const n = Math.min(PIECE_SIZE - at, c.length - off);
      piece.set(n === c.length ? c : c.subarray(off, off + n), at);
      at += n;
      off += n;
      if (at === PIECE_SIZE) {
        const full = piece;
        piece = undefined;
        at = 0;
        yield full;
      }
    }
  }
  if (piece && at > 0) yield piece.subarray(0, at);
}
