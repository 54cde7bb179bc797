// Container logs in the kubelet's CRI format: one record per line,
//
//   <RFC3339Nano time> <stdout|stderr> <P|F> <content>
//
// `F` ends a line the container wrote; `P` is a piece of a line cut at
// max_container_log_line_size. A line is only cut by that size or by the stream's end (then it
// is written as `F`), never because the container paused mid-line. The log file is opened in
// append mode and can be reopened after the kubelet rotated it (ReopenContainerLog).
import { closeSync, constants as fsc, openSync, writeSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { dirname } from "node:path";
import type { Readable } from "node:stream";

/** Go's RFC3339Nano in UTC: trailing zeros of the fraction dropped, no fraction when zero. */
export function rfc3339Nano(ms: number, nanosInMs = 0): string {
  const d = new Date(Math.floor(ms));
  const base = d.toISOString().slice(0, 19);
  const ns = (Math.floor(ms) % 1000) * 1_000_000 + nanosInMs;
  if (ns === 0) return `${base}Z`;
  return `${base}.${String(ns).padStart(9, "0").replace(/0+$/, "")}Z`;
}

/** The time now with sub-millisecond digits from the monotonic clock. */
export function nowRfc3339Nano(): string {
  const t = performance.timeOrigin + performance.now();
  const ms = Math.floor(t);
  return rfc3339Nano(ms, Math.floor((t - ms) * 1e6));
}

/** The log file of one container; both streams write to it. */
export class CriLogFile {
  private fd: number | undefined;

  constructor(readonly path: string) {}

  async open(): Promise<void> {
    await mkdir(dirname(this.path), { recursive: true });
    this.openNow();
  }

  private openNow(): void {
    this.fd = openSync(this.path, fsc.O_WRONLY | fsc.O_APPEND | fsc.O_CREAT, 0o640);
  }

  /** After rotation: close the renamed file, create the path anew. */
  reopen(): void {
    const old = this.fd;
    this.openNow();
    if (old !== undefined) closeSync(old);
  }

  write(stream: "stdout" | "stderr", tag: "P" | "F", content: Buffer): void {
    if (this.fd === undefined) return;
    const head = Buffer.from(`${nowRfc3339Nano()} ${stream} ${tag} `);
    const rec = Buffer.concat([head, content, Buffer.from("\n")]);
    try {
      writeSync(this.fd, rec);
    } catch {
      // a full disk loses log lines, never the container
    }
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  get isOpen(): boolean {
    return this.fd !== undefined;
  }
}

/**
 * Copy one stream of a container into its log file, line by line; resolves at the stream's end.
 * `maxLineSize` < 0 means lines are never cut.
 */
export function copyToCriLog(
  src: Readable,
  stream: "stdout" | "stderr",
  file: CriLogFile,
  maxLineSize: number,
): Promise<void> {
  return new Promise((resolve) => {
    let pending: Buffer = Buffer.alloc(0);
    const flushFull = (line: Buffer) => {
      const body = line.length > 0 && line[line.length - 1] === 0x0d ? line.subarray(0, -1) : line;
      file.write(stream, "F", body);
    };
    const cut = () => {
      if (maxLineSize <= 0) return;
      while (pending.length >= maxLineSize) {
        file.write(stream, "P", pending.subarray(0, maxLineSize));
        pending = pending.subarray(maxLineSize);
      }
    };
    src.on("data", (chunk: Buffer) => {
      let start = 0;
      for (;;) {
        const nl = chunk.indexOf(0x0a, start);
        if (nl < 0) break;
        const piece = chunk.subarray(start, nl);
        let line = pending.length > 0 ? Buffer.concat([pending, piece]) : piece;
        pending = Buffer.alloc(0);
        if (maxLineSize > 0) {
          while (line.length > maxLineSize) {
            file.write(stream, "P", line.subarray(0, maxLineSize));
            line = line.subarray(maxLineSize);
          }
        }
        flushFull(line);
        start = nl + 1;
      }
      if (start < chunk.length) {
        pending = Buffer.concat([pending, chunk.subarray(start)]);
        cut();
      }
    });
    const end = () => {
      if (pending.length > 0) flushFull(pending);
      pending = Buffer.alloc(0);
      resolve();
    };
    src.once("end", end);
    src.once("close", end);
    src.once("error", end);
  });
}

/** Collects a stream up to `cap` bytes (ExecSync output); what is beyond is dropped. */
export function collectCapped(src: Readable, cap: number): { done: Promise<Buffer> } {
  const parts: Buffer[] = [];
  let size = 0;
  const done = new Promise<Buffer>((resolve) => {
    src.on("data", (b: Buffer) => {
      if (size >= cap) return;
      const take = b.subarray(0, cap - size);
      parts.push(take);
      size += take.length;
    });
    const fin = () => resolve(Buffer.concat(parts));
    src.once("end", fin);
    src.once("close", fin);
    src.once("error", fin);
  });
  return { done };
}
