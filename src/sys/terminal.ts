// Terminal control calls: termios get/set and the window size (TIOCGWINSZ). What raw mode means
// is the caller's business (the CLI's console); this file only moves the bytes of struct termios.
import { libc } from "./libc.js";

/** sizeof(struct termios) on glibc/Linux: four u32 flags, c_line, c_cc[32], two u32 speeds. */
export const TERMIOS_SIZE = 60;
const TCSANOW = 0;
const TIOCGWINSZ = 0x5413;

const tcgetattr = () => libc("tcgetattr", "int tcgetattr(int fd, _Out_ uint8_t *termios)");
const tcsetattr = () => libc("tcsetattr", "int tcsetattr(int fd, int action, const uint8_t *termios)");
const ioctlWinsize = () => libc("ioctl", "int ioctl(int fd, unsigned long request, _Out_ uint8_t *arg)");

/** The terminal's struct termios, as raw bytes. */
export function getTermios(fd: number): Buffer {
  const b = Buffer.alloc(TERMIOS_SIZE);
  if (tcgetattr()(fd, b) !== 0) throw new Error(`tcgetattr on fd ${fd} failed`);
  return b;
}

/** Apply a struct termios now (TCSANOW). */
export function setTermios(fd: number, b: Buffer): void {
  if (tcsetattr()(fd, TCSANOW, b) !== 0) throw new Error(`tcsetattr on fd ${fd} failed`);
}

/** Columns and rows of the terminal window. */
export function windowSize(fd: number): { width: number; height: number } {
  const ws = Buffer.alloc(8);
  if (ioctlWinsize()(fd, TIOCGWINSZ, ws) !== 0) throw new Error(`TIOCGWINSZ on fd ${fd} failed`);
  return { height: ws.readUInt16LE(0), width: ws.readUInt16LE(2) };
}
