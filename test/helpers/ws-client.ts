// A WebSocket client of Kubernetes' channel protocols (exec/attach and port forward): the RFC 6455
// opening handshake (checking Sec-WebSocket-Accept), then channel-prefixed messages. The frame
// codec is berth's (src/cri/streaming/websocket.ts); test/unit/websocket.test.ts checks it
// against RFC 6455's example frames.
import { randomBytes } from "node:crypto";
import type net from "node:net";
import { acceptKey, WsConnection } from "../../src/cri/streaming/websocket.js";
import { rawRequest } from "./spdy-client.js";

export interface WsConnected {
  ws: WsConnection;
  protocol: string;
}

export async function wsConnect(url: string, protocols: string[]): Promise<WsConnected> {
  const key = randomBytes(16).toString("base64");
  const r = await rawRequest(url, {
    Connection: "Upgrade",
    Upgrade: "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": key,
    ...(protocols.length ? { "Sec-WebSocket-Protocol": protocols.join(", ") } : {}),
  });
  if (r.status !== 101) throw new Error(`upgrade refused: ${r.status} ${r.body.trim()}`);
  if (r.headers["sec-websocket-accept"] !== acceptKey(key)) throw new Error("bad Sec-WebSocket-Accept");
  const ws = new WsConnection(r.socket as net.Socket, "client");
  r.socket.resume();
  return { ws, protocol: r.headers["sec-websocket-protocol"] ?? "" };
}

/** Encode one channel message the way `protocol` wants it. */
export function channelMessage(
  protocol: string,
  channel: number,
  data: Buffer | string,
): [Buffer | string, boolean] {
  const b = Buffer.from(data);
  if (protocol.includes("base64")) return [String(channel) + b.toString("base64"), false];
  return [Buffer.concat([Buffer.from([channel]), b]), true];
}

export function decodeMessage(
  protocol: string,
  data: Buffer,
  binary: boolean,
): { channel: number; data: Buffer } {
  if (protocol.includes("base64") && !binary)
    return { channel: data[0]! - 0x30, data: Buffer.from(data.subarray(1).toString(), "base64") };
  return { channel: data[0]!, data: data.subarray(1) };
}

export interface WsExecOptions {
  protocols?: string[];
  stdin?: string;
  /** v5: send the close signal for stdin after writing it (default true). */
  closeStdin?: boolean;
  resize?: { Width: number; Height: number }[];
  onStdout?: (chunk: string, send: (s: string) => void) => void;
}

export interface WsExecResult {
  protocol: string;
  stdout: string;
  stderr: string;
  error: string;
  closeCode: number;
}

/** Run an exec/attach URL to its end over WebSocket. */
export async function wsExec(url: string, o: WsExecOptions = {}): Promise<WsExecResult> {
  const { ws, protocol } = await wsConnect(url, o.protocols ?? ["v5.channel.k8s.io"]);
  const out = { stdout: "", stderr: "", error: "" };
  const send = (ch: number, d: Buffer | string) => {
    const [m, bin] = channelMessage(protocol, ch, d);
    void ws.send(m, bin);
  };
  ws.on("message", (data: Buffer, binary: boolean) => {
    const m = decodeMessage(protocol, data, binary);
    const s = m.data.toString();
    if (m.channel === 1) {
      out.stdout += s;
      o.onStdout?.(s, (x) => send(0, x));
    } else if (m.channel === 2) out.stderr += s;
    else if (m.channel === 3) out.error += s;
  });
  const closed = new Promise<number>((r) => ws.once("close", (code: number) => r(code)));
  for (const sz of o.resize ?? []) send(4, JSON.stringify(sz));
  if (o.stdin !== undefined) {
    send(0, o.stdin);
    if (o.closeStdin !== false && protocol.startsWith("v5.")) send(255, Buffer.from([0]));
  }
  const closeCode = await closed;
  return { protocol, ...out, closeCode };
}

/** Forward one port over WebSocket (v4.channel.k8s.io): data on channel 0, errors on 1. */
export async function wsPortForward(url: string, port: number, protocol = "v4.channel.k8s.io") {
  const { ws, protocol: got } = await wsConnect(`${url}?port=${port}`, [protocol]);
  const data: Buffer[] = [];
  let error = "";
  const seen = new Set<number>();
  const portHeaders: Buffer[] = [];
  ws.on("message", (d: Buffer, binary: boolean) => {
    const m = decodeMessage(got, d, binary);
    // the first message of each channel is the port number (16-bit little-endian)
    if (!seen.has(m.channel)) {
      seen.add(m.channel);
      portHeaders.push(m.data);
      return;
    }
    if (m.channel === 0) data.push(m.data);
    else if (m.channel === 1) error += m.data.toString();
  });
  const closed = new Promise<void>((r) => ws.once("close", () => r()));
  return {
    protocol: got,
    portHeaders,
    send(b: Buffer | string) {
      const [m, bin] = channelMessage(got, 0, b);
      void ws.send(m, bin);
    },
    async result() {
      await closed;
      return { data: Buffer.concat(data).toString(), error };
    },
    close() {
      ws.close();
    },
  };
}
