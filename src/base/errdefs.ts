// The containerd errdefs set, with the one mapping to and from gRPC status codes.
// Code never matches error strings: it checks `kind`.

export type ErrorKind =
  | "unknown"
  | "invalid argument"
  | "not found"
  | "already exists"
  | "permission denied"
  | "resource exhausted"
  | "failed precondition"
  | "conflict"
  | "not modified"
  | "aborted"
  | "out of range"
  | "not implemented"
  | "internal"
  | "unavailable"
  | "data loss"
  | "unauthenticated"
  | "canceled"
  | "deadline exceeded";

/** gRPC status codes (numeric, as on the wire). */
export const GrpcCode = {
  OK: 0,
  Canceled: 1,
  Unknown: 2,
  InvalidArgument: 3,
  DeadlineExceeded: 4,
  NotFound: 5,
  AlreadyExists: 6,
  PermissionDenied: 7,
  ResourceExhausted: 8,
  FailedPrecondition: 9,
  Aborted: 10,
  OutOfRange: 11,
  Unimplemented: 12,
  Internal: 13,
  Unavailable: 14,
  DataLoss: 15,
  Unauthenticated: 16,
} as const;

/** Status code names by number, as grpc-go prints them. */
export const GRPC_CODE_NAMES: readonly string[] = Object.keys(GrpcCode);

const kindToCode: Record<ErrorKind, number> = {
  unknown: GrpcCode.Unknown,
  "invalid argument": GrpcCode.InvalidArgument,
  "not found": GrpcCode.NotFound,
  "already exists": GrpcCode.AlreadyExists,
  "permission denied": GrpcCode.PermissionDenied,
  "resource exhausted": GrpcCode.ResourceExhausted,
  "failed precondition": GrpcCode.FailedPrecondition,
  conflict: GrpcCode.FailedPrecondition,
  "not modified": GrpcCode.FailedPrecondition,
  aborted: GrpcCode.Aborted,
  "out of range": GrpcCode.OutOfRange,
  "not implemented": GrpcCode.Unimplemented,
  internal: GrpcCode.Internal,
  unavailable: GrpcCode.Unavailable,
  "data loss": GrpcCode.DataLoss,
  unauthenticated: GrpcCode.Unauthenticated,
  canceled: GrpcCode.Canceled,
  "deadline exceeded": GrpcCode.DeadlineExceeded,
};

const codeToKind = new Map<number, ErrorKind>([
  [GrpcCode.Canceled, "canceled"],
  [GrpcCode.Unknown, "unknown"],
  [GrpcCode.InvalidArgument, "invalid argument"],
  [GrpcCode.DeadlineExceeded, "deadline exceeded"],
  [GrpcCode.NotFound, "not found"],
  [GrpcCode.AlreadyExists, "already exists"],
  [GrpcCode.PermissionDenied, "permission denied"],
  [GrpcCode.ResourceExhausted, "resource exhausted"],
  [GrpcCode.FailedPrecondition, "failed precondition"],
  [GrpcCode.Aborted, "aborted"],
  [GrpcCode.OutOfRange, "out of range"],
  [GrpcCode.Unimplemented, "not implemented"],
  [GrpcCode.Internal, "internal"],
  [GrpcCode.Unavailable, "unavailable"],
  [GrpcCode.DataLoss, "data loss"],
  [GrpcCode.Unauthenticated, "unauthenticated"],
]);

/**
 * An error with a containerd kind. Its message reads like containerd's wrapped errors:
 * `<context>: <kind>` (e.g. `namespace "x": not found`), which is what clients print.
 */
export class BerthError extends Error {
  readonly kind: ErrorKind;
  constructor(kind: ErrorKind, context?: string, options?: { cause?: unknown }) {
    super(context ? `${context}: ${kind}` : kind, options);
    this.kind = kind;
    this.name = "BerthError";
  }
  get grpcCode(): number {
    return kindToCode[this.kind];
  }
}

const make = (kind: ErrorKind) => (context?: string, cause?: unknown) =>
  new BerthError(kind, context, cause === undefined ? undefined : { cause });

export const errNotFound = make("not found");
export const errAlreadyExists = make("already exists");
export const errInvalidArgument = make("invalid argument");
export const errFailedPrecondition = make("failed precondition");
export const errConflict = make("conflict");
export const errUnavailable = make("unavailable");
export const errNotImplemented = make("not implemented");
export const errInternal = make("internal");
export const errAborted = make("aborted");
export const errCanceled = make("canceled");
export const errPermissionDenied = make("permission denied");
export const errResourceExhausted = make("resource exhausted");
export const errOutOfRange = make("out of range");

export function isKind(err: unknown, kind: ErrorKind): boolean {
  return err instanceof BerthError && err.kind === kind;
}
export const isNotFound = (err: unknown) => isKind(err, "not found");
export const isAlreadyExists = (err: unknown) => isKind(err, "already exists");

/** Map any thrown value to a gRPC code and message, as containerd's ToGRPC does. */
export function toGrpcStatus(err: unknown): { code: number; message: string } {
  if (err instanceof BerthError) return { code: err.grpcCode, message: err.message };
  const e = err as NodeJS.ErrnoException | undefined;
  if (e?.code === "ENOENT") return { code: GrpcCode.NotFound, message: String(e.message) };
  // out of space: the disk (ENOSPC, EDQUOT) or SQLite's "database or disk is full"
  if (e?.code === "ENOSPC" || e?.code === "EDQUOT" || e?.code === "SQLITE_FULL")
    return { code: GrpcCode.ResourceExhausted, message: String(e.message) };
  if (e?.code === "EACCES" || e?.code === "EPERM")
    return { code: GrpcCode.PermissionDenied, message: String(e.message) };
  return { code: GrpcCode.Unknown, message: err instanceof Error ? err.message : String(err) };
}

/** Map a gRPC status back to a BerthError (client side), keeping the server's message. */
export function fromGrpcStatus(code: number, message: string): BerthError {
  const kind = codeToKind.get(code) ?? "unknown";
  const err = new BerthError(kind);
  // Keep the server's message verbatim: it already carries the kind suffix.
  err.message = message;
  return err;
}

/**
 * An error of `kind` whose message is exactly `message`, with no `: <kind>` suffix: for texts that
 * containerd sends as they are (its status.Errorf), so clients print the same line.
 */
export function errorf(kind: ErrorKind, message: string, cause?: unknown): BerthError {
  const err = new BerthError(kind, undefined, cause === undefined ? undefined : { cause });
  err.message = message;
  return err;
}

/**
 * `err` with `<prefix>: ` before its message, keeping what callers branch on: a BerthError keeps
 * its kind, a system error its errno `code` (so the gRPC mapping stays the same). The original is
 * the new error's cause.
 */
export function wrap(err: unknown, prefix: string): Error {
  if (err instanceof BerthError) return errorf(err.kind, `${prefix}: ${err.message}`, err);
  if (!(err instanceof Error)) return new Error(`${prefix}: ${String(err)}`);
  const out: Error & { code?: unknown } = new Error(`${prefix}: ${err.message}`, { cause: err });
  const code = (err as NodeJS.ErrnoException).code;
  if (code !== undefined) out.code = code;
  return out;
}
