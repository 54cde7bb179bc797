// Assertions shared by the unit tests.
import assert from "node:assert/strict";
import { BerthError } from "../../src/base/errdefs.js";

/**
 * For assert.throws/rejects: the error is a BerthError of kind `k`, with exactly `message` (a
 * string) or a message matching it (a RegExp) when one is given.
 */
export function kind(k: string, message?: string | RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof BerthError, `expected BerthError, got ${String(err)}`);
    assert.equal(err.kind, k, `kind of ${err.message}`);
    if (typeof message === "string") assert.equal(err.message, message);
    else if (message) assert.match(err.message, message);
    return true;
  };
}
