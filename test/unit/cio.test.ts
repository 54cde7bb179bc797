// Task I/O without a daemon: FIFO sets made and removed, data copied both ways between FIFOs and
// the caller's streams (the shim's end played by plain opens), detached sets held open, and the
// log URIs in the forms containerd's cio writes and the runc shim reads.
import assert from "node:assert/strict";
import { closeSync, existsSync, constants as fsc, lstatSync, openSync, readSync, writeSync } from "node:fs";
import path from "node:path";
import { PassThrough } from "node:stream";
import { after, before, describe, it } from "node:test";
import {
  binaryIO,
  escapePath,
  escapeQuery,
  FifoReader,
  fifoIO,
  logFileIO,
  logURI,
  logURIIO,
  mkfifo,
  NULL_IO,
  newFifoIO,
  newFifoSet,
  parseIOURI,
  removeFifoDir,
  removeFifoSet,
} from "../../src/core/cio/index.js";
import { makeTempDirSync, removeTempDirSync } from "../helpers/tmp.js";

let dir = "";
before(() => {
  dir = makeTempDirSync("cio");
});
after(() => removeTempDirSync(dir));

const isFifo = (p: string) => lstatSync(p).isFIFO();

/** Collects what is written to a stream. */
function sink(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough();
  const parts: Buffer[] = [];
  stream.on("data", (b: Buffer) => parts.push(b));
  return { stream, text: () => Buffer.concat(parts).toString("utf8") };
}

describe("FIFO sets", () => {
  it("makes stdin/stdout/stderr FIFOs in a fresh 0700 directory and removes them", () => {
    const root = path.join(dir, "sets");
    const set = newFifoSet(root, "c1");
    assert.equal(path.dirname(set.dir), root);
    assert.equal(lstatSync(set.dir).mode & 0o777, 0o700);
    assert.equal(set.stdin, path.join(set.dir, "c1-stdin"));
    assert.equal(set.stdout, path.join(set.dir, "c1-stdout"));
    assert.equal(set.stderr, path.join(set.dir, "c1-stderr"));
    for (const p of [set.stdin, set.stdout, set.stderr]) assert.ok(isFifo(p));
    const other = newFifoSet(root, "c1");
    assert.notEqual(other.dir, set.dir);
    removeFifoSet(set);
    assert.ok(!existsSync(set.dir));
    assert.ok(existsSync(other.dir));
  });

  it("a terminal has no stderr; an exec's names carry its id", () => {
    const set = newFifoSet(path.join(dir, "sets"), "c2", { terminal: true, execId: "e1" });
    assert.equal(set.stderr, "");
    assert.equal(path.basename(set.stdout), "c2-e1-stdout");
  });

  it("stdin: false makes no stdin FIFO", () => {
    const set = newFifoSet(path.join(dir, "sets"), "c4", { stdin: false });
    assert.equal(set.stdin, "");
    assert.ok(isFifo(set.stdout) && isFifo(set.stderr));
    removeFifoSet(set);
    removeFifoSet(undefined);
  });

  it("a FifoReader sees no EOF before the writer comes, then the data, then EOF after release", async () => {
    const set = newFifoSet(path.join(dir, "sets"), "c5", { stdin: false });
    const r = new FifoReader(set.stdout);
    const got: Buffer[] = [];
    const ended = new Promise<void>((resolve) => r.socket.once("end", () => resolve()));
    r.socket.on("data", (b: Buffer) => got.push(b));
    let early = false;
    r.socket.once("end", () => {
      early = got.length === 0;
    });
    await new Promise((res) => setTimeout(res, 50));
    assert.equal(early, false, "no end-of-file while no writer had opened the FIFO");
    const w = openSync(set.stdout, fsc.O_WRONLY | fsc.O_NONBLOCK);
    r.release();
    writeSync(w, "out\n");
    closeSync(w);
    await ended;
    assert.equal(Buffer.concat(got).toString(), "out\n");
    r.close();
    removeFifoSet(set);
  });

  it("mkfifo leaves an existing FIFO alone", () => {
    const p = path.join(dir, "again");
    mkfifo(p);
    mkfifo(p);
    assert.ok(isFifo(p));
  });

  it("removeFifoDir removes only a set directory directly under its root", () => {
    const root = path.join(dir, "root");
    const set = newFifoSet(root, "c3");
    removeFifoDir({ stdout: "file:///var/log/x", stdin: "" }, root);
    removeFifoDir({ stdout: path.join(dir, "elsewhere", "x", "c-stdout") }, root);
    assert.ok(existsSync(set.dir));
    removeFifoDir(set, root);
    assert.ok(!existsSync(set.dir));
  });
});

describe("FIFO I/O", () => {
  it("copies the process's stdout and stderr to the caller's streams until EOF", async () => {
    const out = sink();
    const err = sink();
    const root = path.join(dir, "io");
    const io = newFifoIO("c4", false, { stdout: out.stream, stderr: err.stream }, { root });
    // the shim's side: writers on the output FIFOs
    const w1 = openSync(io.stdout, fsc.O_WRONLY);
    const w2 = openSync(io.stderr, fsc.O_WRONLY);
    writeSync(w1, "hello out\n");
    writeSync(w2, "hello err\n");
    closeSync(w1);
    closeSync(w2);
    await io.drained(5000);
    assert.equal(out.text(), "hello out\n");
    assert.equal(err.text(), "hello err\n");
    const setDir = path.dirname(io.stdout);
    io.close();
    assert.ok(!existsSync(setDir), "closing removes the set's directory");
  });

  it("copies the caller's stdin into the process and reports its end", async () => {
    const input = new PassThrough();
    const io = newFifoIO("c5", false, { stdin: input }, { root: path.join(dir, "io") });
    const r = openSync(io.stdin, fsc.O_RDONLY | fsc.O_NONBLOCK);
    const ended = new Promise<void>((resolve) => io.startInput(resolve));
    input.end("typed\n");
    await ended;
    const buf = Buffer.alloc(64);
    const n = readSync(r, buf);
    assert.equal(buf.subarray(0, n).toString(), "typed\n");
    closeSync(r);
    io.close();
    assert.ok(input.destroyed, "close() releases the caller's stdin");
  });

  it("attaches to existing FIFOs by path", async () => {
    const set = newFifoSet(path.join(dir, "attach"), "c6", { terminal: true });
    const out = sink();
    const io = fifoIO(set, true, { stdout: out.stream });
    assert.equal(io.terminal, true);
    const w = openSync(set.stdout, fsc.O_WRONLY);
    writeSync(w, "again\n");
    closeSync(w);
    await io.drained(5000);
    io.close();
    assert.equal(out.text(), "again\n");
    assert.ok(existsSync(set.dir), "an attach leaves the FIFOs for their owner");
  });

  it("a kept (detached) set holds readers so a writer opens at once, and outlives close", () => {
    const io = newFifoIO("c7", false, {}, { root: path.join(dir, "keep"), keep: true });
    // O_NONBLOCK write-open fails with ENXIO when nobody reads: it succeeds here
    const w = openSync(io.stdout, fsc.O_WRONLY | fsc.O_NONBLOCK);
    writeSync(w, "kept");
    closeSync(w);
    io.close();
    assert.ok(isFifo(io.stdout));
    assert.throws(() => openSync(io.stdout, fsc.O_WRONLY | fsc.O_NONBLOCK), /ENXIO/);
  });

  it("null I/O names no paths", async () => {
    assert.deepEqual([NULL_IO.stdin, NULL_IO.stdout, NULL_IO.stderr, NULL_IO.terminal], ["", "", "", false]);
    await NULL_IO.drained();
  });
});

describe("log URIs", () => {
  it("file:// for a log file, both streams, no stdin", () => {
    const io = logFileIO("/var/log/ctr/../c1.log");
    assert.equal(io.stdout, "file:///var/log/c1.log");
    assert.equal(io.stderr, io.stdout);
    assert.equal(io.stdin, "");
    assert.equal(io.terminal, false);
    assert.throws(() => logFileIO("relative.log"), /absolute path needed/);
  });

  it("binary:// with sorted, query-escaped args", () => {
    const io = binaryIO("/usr/bin/logger", { tag: "a b", id: "x&y=z" });
    assert.equal(io.stdout, "binary:///usr/bin/logger?id=x%26y%3Dz&tag=a+b");
    assert.equal(io.stderr, io.stdout);
    assert.equal(binaryIO("/bin/l").stdout, "binary:///bin/l");
    assert.equal(binaryIO("/bin/l", {}, true).terminal, true);
  });

  it("paths are escaped as Go's url.URL writes them", () => {
    assert.equal(escapePath("/a b/c:d@e$f&g+h,i;j=k/é?#"), "/a%20b/c:d@e$f&g+h,i;j=k/%C3%A9%3F%23");
    assert.equal(escapeQuery("a b/c~"), "a+b%2Fc~");
    assert.equal(logURI("file", "/x/"), "file:///x");
  });

  it("reads back the way the shim does: scheme, path, args", () => {
    assert.deepEqual(parseIOURI("/run/berth/fifo/x/c-stdout"), {
      scheme: "fifo",
      path: "/run/berth/fifo/x/c-stdout",
      args: [],
    });
    assert.deepEqual(parseIOURI(logURI("file", "/a b/log")), { scheme: "file", path: "/a b/log", args: [] });
    assert.deepEqual(parseIOURI(binaryIO("/bin/l", { tag: "a b" }).stdout), {
      scheme: "binary",
      path: "/bin/l",
      args: ["tag", "a b"],
    });
  });

  it("a given URI passes through as is for stdout and stderr", () => {
    const io = logURIIO("binary:///bin/l?x=1");
    assert.deepEqual([io.stdin, io.stdout, io.stderr], ["", "binary:///bin/l?x=1", "binary:///bin/l?x=1"]);
  });
});
