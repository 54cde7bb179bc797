// The terminal berth runs in, for `-t`: the first of stderr, stdout and stdin that is a TTY (as
// ctr picks it), switched to raw input the way cfmakeraw does it while output processing stays on
// (as ctr's console keeps OPOST, so the bytes on screen match ctr's), its window size read with
// TIOCGWINSZ, and the saved settings put back on reset.
//
// Not Node's tty.ReadStream#setRawMode: it works on stdin only (ctr's console is stderr first),
// and libuv's raw mode is not cfmakeraw's. Measured on a pty (termios before/after): from a
// default terminal both give the same flags, but from one with IGNBRK, PARMRK, INLCR, IGNCR or
// ECHONL set libuv leaves those on (and clears INPCK, which cfmakeraw keeps), so CR
// and NL could still be translated or dropped.
import tty from "node:tty";
import { getTermios, setTermios, windowSize } from "../../sys/terminal.js";

// offsets in struct termios (glibc, Linux): c_iflag, c_oflag, c_cflag, c_lflag (u32), c_line
// (u8), then c_cc[32]
const IFLAG = 0;
const CFLAG = 8;
const LFLAG = 12;
const CC = 17;
const VTIME = 5;
const VMIN = 6;

const I = {
  IGNBRK: 0o1,
  BRKINT: 0o2,
  PARMRK: 0o10,
  ISTRIP: 0o40,
  INLCR: 0o100,
  IGNCR: 0o200,
  ICRNL: 0o400,
  IXON: 0o2000,
};
const L = { ISIG: 0o1, ICANON: 0o2, ECHO: 0o10, ECHONL: 0o100, IEXTEN: 0o100000 };
const CSIZE = 0o60;
const PARENB = 0o400;
const CS8 = 0o60;

export interface ConsoleSize {
  width: number;
  height: number;
}

export interface Console {
  readonly fd: number;
  /** Columns and rows of the terminal window. */
  size(): ConsoleSize;
  /** Raw input: keys pass unchanged (no echo, no line editing, no signals from keys). */
  setRaw(): void;
  /** Back to the settings found before setRaw (a no-op when it was never called). */
  reset(): void;
}

/** The terminal on stderr, stdout or stdin (first found), or undefined when none is one. */
export function currentConsole(): Console | undefined {
  const fd = [2, 1, 0].find((f) => tty.isatty(f));
  if (fd === undefined) return undefined;
  let saved: Buffer | undefined;
  return {
    fd,
    size: () => windowSize(fd),
    setRaw() {
      const t = getTermios(fd);
      saved ??= Buffer.from(t);
      t.writeUInt32LE(
        (t.readUInt32LE(IFLAG) &
          ~(I.IGNBRK | I.BRKINT | I.PARMRK | I.ISTRIP | I.INLCR | I.IGNCR | I.ICRNL | I.IXON)) >>>
          0,
        IFLAG,
      );
      t.writeUInt32LE(
        (t.readUInt32LE(LFLAG) & ~(L.ECHO | L.ECHONL | L.ICANON | L.ISIG | L.IEXTEN)) >>> 0,
        LFLAG,
      );
      t.writeUInt32LE(((t.readUInt32LE(CFLAG) & ~(CSIZE | PARENB)) | CS8) >>> 0, CFLAG);
      t[CC + VMIN] = 1;
      t[CC + VTIME] = 0;
      setTermios(fd, t);
    },
    reset() {
      if (saved) setTermios(fd, saved);
    },
  };
}

/** Our console in raw mode for a `-t` process (undefined when berth has no terminal). */
export function rawConsole(): Console | undefined {
  const con = currentConsole();
  con?.setRaw();
  return con;
}

/**
 * Keeps the task's pty sized like our console: `before()` sizes it ahead of Start (an init process
 * has its pty from Create on; an exec's comes with Start, so that one may fail quietly), `after()`
 * once started (as ctr does) and on every SIGWINCH from then on; `undo()` stops listening.
 */
export function consoleResizer(
  con: Console | undefined,
  resize: (width: number, height: number) => Promise<unknown>,
): { before(): Promise<void>; after(): Promise<void>; undo(): void } {
  const once = async (report: boolean) => {
    if (!con) return;
    try {
      const { width, height } = con.size();
      await resize(width, height);
    } catch (err) {
      if (report) process.stderr.write(`berth: resize pty: ${(err as Error).message}\n`);
    }
  };
  const onWinch = () => {
    void once(true);
  };
  return {
    before: () => once(false),
    async after() {
      if (!con) return;
      await once(true);
      process.on("SIGWINCH", onWinch);
    },
    undo() {
      process.off("SIGWINCH", onWinch);
    },
  };
}
