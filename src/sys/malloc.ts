// glibc's malloc_trim: give the kernel back free memory at the top of malloc's heaps and in
// unused pages of its arenas. Memory a terminated worker thread, SQLite or a large response
// freed otherwise stays in berthd's RSS until malloc reuses it.
import { libc } from "./libc.js";

/** malloc_trim(0); true when some memory was released. */
export function mallocTrim(): boolean {
  return (libc("malloc_trim", "int malloc_trim(size_t pad)")(0) as number) === 1;
}

/** How often the daemon trims: often enough to follow bursts (pulls, compiles), cheap (~1 ms). */
const TRIM_EVERY_MS = 30_000;

/**
 * Trims on a timer that never keeps the process alive. Measured under container and pull churn:
 * V8 had freed its peak of 43 MiB of malloc'd compile memory, glibc still held 44 MiB of heap.
 */
export function startMallocTrim(): NodeJS.Timeout {
  const t = setInterval(() => {
    try {
      mallocTrim();
    } catch {
      // not glibc: nothing to trim
    }
  }, TRIM_EVERY_MS);
  t.unref();
  return t;
}
