// Small helpers shared by the pod and container methods.

const locks = new WeakMap<object, Promise<unknown>>();

/**
 * Runs `fn` after every earlier call for the same record has settled: start/stop/remove/status
 * of one pod or container do not interleave, while different records proceed in parallel.
 */
export function locked<T>(record: object, fn: () => Promise<T>): Promise<T> {
  const prev = locks.get(record) ?? Promise.resolve();
  const p = prev.then(fn, fn);
  locks.set(
    record,
    p.catch(() => {}),
  );
  return p;
}

/** CRI label selectors: every selector key present with the same value. */
export const matchLabels = (labels: Record<string, string>, sel: Record<string, string>) =>
  Object.entries(sel).every(([k, v]) => labels[k] === v);
