// A task process's standard I/O as the Tasks API carries it: three paths or URIs (stdin, stdout,
// stderr) and a terminal flag, plus the local side that copies data in and out of them.

/** The streams a caller connects to a process (any of them may be left out). */
export interface IOStreams {
  stdin?: NodeJS.ReadableStream;
  stdout?: NodeJS.WritableStream;
  stderr?: NodeJS.WritableStream;
}

/** The paths or URIs handed to the shim (empty: none). */
export interface IOConfig {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

export interface TaskIO extends IOConfig {
  /**
   * Start copying the caller's stdin into the process (call once the process exists); `onEnd`
   * runs once that stdin ended and everything was written (the caller then closes the process's
   * stdin with CloseIO).
   */
  startInput(onEnd?: () => void): void;
  /** Resolves when the process's output reached EOF (or after `graceMs`). */
  drained(graceMs?: number): Promise<void>;
  /** Stops copying and releases what this side holds open. */
  close(): void;
}

/** No I/O: the shim connects the process to /dev/null. */
export const NULL_IO: TaskIO = {
  stdin: "",
  stdout: "",
  stderr: "",
  terminal: false,
  startInput() {},
  drained: async () => {},
  close() {},
};

/** A TaskIO that only names paths or URIs (the shim does the copying). */
export function configIO(config: IOConfig): TaskIO {
  return { ...NULL_IO, ...config };
}
