// The error every raw call in src/sys throws: the syscall, what it acted on, and the errno, named
// the way Node names system errors (util.getSystemErrorName) so callers can test `code`.
import { getSystemErrorName } from "node:util";

/** Kernel errnos are small; libuv gives its own codes (EOF, EAI_*) numbers in the thousands. */
const ERRNO_LIMIT = 1024;

/** errno's symbolic name (EEXIST, ENODATA, ...), or `E<n>` when the platform has none. */
export function errnoName(errno: number): string {
  if (!Number.isInteger(errno) || errno <= 0 || errno >= ERRNO_LIMIT) return `E${errno}`;
  const name = getSystemErrorName(-errno);
  return name.startsWith("Unknown") ? `E${errno}` : name;
}

export class SyscallError extends Error {
  constructor(
    readonly syscall: string,
    readonly errno: number,
    detail: string,
  ) {
    const name = errnoName(errno);
    super(`${syscall} ${detail}: ${name === `E${errno}` ? `errno ${errno}` : name}`);
    this.name = "SyscallError";
  }
  get code(): string {
    return errnoName(this.errno);
  }
}
