// A unix datagram socket standing in for systemd's $NOTIFY_SOCKET. Node has no unix datagram
// sockets, so python3 binds it and prints each datagram on its own line.
import { spawn } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";

export interface NotifyListener {
  /** Every datagram received so far, in order. */
  messages(): string[];
  /** Waits until `pred(messages)` holds (default 10 s); throws with what arrived otherwise. */
  until(pred: (msgs: string[]) => boolean, timeoutMs?: number): Promise<void>;
  close(): void;
}

const SCRIPT = [
  "import socket,sys",
  "s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)",
  "s.bind(sys.argv[1])",
  "print('bound',flush=True)",
  "while True:",
  "  m=s.recv(4096).decode().replace('\\n','\\\\n')",
  "  print(m,flush=True)",
].join("\n");

export async function listenNotify(path: string): Promise<NotifyListener> {
  const child = spawn("python3", ["-c", SCRIPT, path], { stdio: ["ignore", "pipe", "inherit"] });
  let buf = "";
  const lines: string[] = [];
  child.stdout.on("data", (c: Buffer) => {
    buf += c.toString();
    let i = buf.indexOf("\n");
    while (i >= 0) {
      lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
      i = buf.indexOf("\n");
    }
  });
  const messages = () => lines.filter((_, i) => i > 0);
  const until = async (pred: (msgs: string[]) => boolean, timeoutMs = 10_000) => {
    const deadline = Date.now() + timeoutMs;
    while (!pred(messages())) {
      if (Date.now() > deadline)
        throw new Error(`notify socket: condition not met; received ${JSON.stringify(messages())}`);
      await sleep(20);
    }
  };
  const deadline = Date.now() + 10_000;
  while (lines[0] !== "bound") {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill();
      throw new Error("notify listener (python3) did not bind");
    }
    await sleep(20);
  }
  return { messages, until, close: () => child.kill() };
}
