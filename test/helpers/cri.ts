// A CRI client for tests: typed RuntimeService/ImageService clients (runtime.v1, over grpc-js via
// src/grpc/client.ts) on a daemon's socket, a raw call for arbitrary method paths, and the real
// `crictl` when it is installed.
import { existsSync } from "node:fs";
import path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { ImageService, RuntimeService } from "../../src/gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { type Client, Connection, grpcTarget } from "../../src/grpc/client.js";
import { type RunOptions, type RunResult, run } from "./ctr.js";
import { busyboxImageWith, pushImage } from "./images.js";

export interface CriClient {
  runtime: Client<typeof RuntimeService>;
  image: Client<typeof ImageService>;
  /** Call any method path with raw request bytes; resolves with the status code and details. */
  raw: RawUnary;
  close(): void;
}

/** A unary call on any method path, with raw request and answer bytes. */
export type RawUnary = (
  methodPath: string,
  body?: Buffer,
) => Promise<{ code: number; details: string; response?: Buffer }>;

/**
 * A grpc-js client that sends and receives bytes as they are (nothing encoded or decoded here),
 * with `headers` on every call; answers up to 256 MiB.
 */
export function rawUnaryClient(
  address: string,
  headers: Record<string, string> = {},
): { call: RawUnary; close: () => void } {
  const raw = new grpc.Client(grpcTarget(address), grpc.credentials.createInsecure(), {
    "grpc.default_authority": "localhost",
    "grpc.max_receive_message_length": 256 << 20,
  });
  const same = (b: Buffer) => b;
  const call: RawUnary = (methodPath, body = Buffer.alloc(0)) =>
    new Promise((resolve) => {
      const md = new grpc.Metadata();
      for (const [k, v] of Object.entries(headers)) md.set(k, v);
      raw.makeUnaryRequest(methodPath, same, same, body, md, (err, res) =>
        resolve(
          err
            ? { code: err.code, details: err.details }
            : { code: 0, details: "", response: res ?? undefined },
        ),
      );
    });
  return { call, close: () => raw.close() };
}

/** The CRI services on a daemon's gRPC socket (kubelet sends no namespace header; none is set). */
export function criClient(address: string): CriClient {
  const conn = new Connection(address);
  const raw = rawUnaryClient(address);
  return {
    runtime: conn.client(RuntimeService),
    image: conn.client(ImageService),
    raw: raw.call,
    close() {
      raw.close();
      conn.close();
    },
  };
}

/** The crictl binary on PATH, if any. */
export function crictlBin(): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(":")) {
    if (dir === "") continue;
    const p = path.join(dir, "crictl");
    if (existsSync(p)) return p;
  }
  return undefined;
}

/** Run crictl against a CRI socket (image and runtime endpoint both); a missing crictl throws. */
export function crictl(address: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const bin = crictlBin();
  if (!bin) throw new Error("crictl is not installed");
  const endpoint = `unix://${address}`;
  return run(
    bin,
    ["--runtime-endpoint", endpoint, "--image-endpoint", endpoint, "--timeout", "60s", ...args],
    opts,
  );
}

/**
 * Pushes the tests' pod sandbox image, `<registry>/test/pause:1`: busybox sleeping until it gets
 * SIGKILL, which is what StopPodSandbox sends a pause container.
 */
export async function pushPauseImage(registryUrl: string): Promise<void> {
  await pushImage(
    registryUrl,
    "test/pause",
    "1",
    busyboxImageWith({ Entrypoint: ["/bin/busybox", "sleep", "1000000"], StopSignal: "SIGKILL" }),
  );
}

export interface CriTestConfig {
  /** The registry the images come from (plain HTTP, through a mirror entry). */
  registryHost: string;
  /** CNI config and plugin directories. */
  confDir: string;
  binDir?: string;
  /** Lines before the CRI section (`[debug]`, GC settings). */
  head?: string[];
  /** More keys of the CRI section itself. */
  cri?: string[];
}

/** berthd's config.toml for a CRI test: the pause image above, the CNI dirs, the registry mirror. */
export function criTestConfig(c: CriTestConfig): string {
  const plugin = '[plugins."io.containerd.grpc.v1.cri"';
  return [
    "version = 2",
    ...(c.head ?? []),
    `${plugin}]`,
    `  sandbox_image = "${c.registryHost}/test/pause:1"`,
    // a sandbox asking for a negative oom_score_adj fails runc create on a machine whose own
    // score may not be lowered
    "  restrict_oom_score_adj = true",
    ...(c.cri ?? []),
    `${plugin}.cni]`,
    `  bin_dir = "${c.binDir ?? "/usr/lib/cni"}"`,
    `  conf_dir = "${c.confDir}"`,
    `${plugin}.registry.mirrors."${c.registryHost}"]`,
    `  endpoint = ["http://${c.registryHost}"]`,
    "",
  ].join("\n");
}
