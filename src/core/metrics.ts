// Prometheus text exposition for the daemon: gRPC call counters (grpc-go's metric names, so
// existing dashboards read them) and process metrics. Small on purpose: no client library.
import { cpuUsage, memoryUsage } from "node:process";
import { GRPC_CODE_NAMES } from "../base/errdefs.js";

const escapeLabel = (v: string) => v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");

const GRPC_TYPE: Record<string, string> = {
  unary: "unary",
  server_streaming: "server_stream",
  client_streaming: "client_stream",
  bidi_streaming: "bidi_stream",
};

export class Metrics {
  private handled = new Map<string, number>();
  private readonly start = Date.now() / 1000;

  /** Count one finished gRPC call. */
  private keys = new Map<string, string>();

  grpcHandled(path: string, kind: string, code: number): void {
    // The label text is built once per (method, kind, code): this runs on every call.
    const id = `${path} ${kind} ${code}`;
    let key = this.keys.get(id);
    if (key === undefined) {
      const [, service = "", method = ""] = path.split("/");
      key = `grpc_code="${GRPC_CODE_NAMES[code] ?? String(code)}",grpc_method="${escapeLabel(method)}",grpc_service="${escapeLabel(service)}",grpc_type="${GRPC_TYPE[kind] ?? kind}"`;
      this.keys.set(id, key);
    }
    this.handled.set(key, (this.handled.get(key) ?? 0) + 1);
  }

  render(): string {
    const lines: string[] = [];
    lines.push(
      "# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.",
    );
    lines.push("# TYPE grpc_server_handled_total counter");
    for (const [k, v] of [...this.handled].sort()) lines.push(`grpc_server_handled_total{${k}} ${v}`);
    const mem = memoryUsage();
    const cpu = cpuUsage();
    lines.push("# HELP process_resident_memory_bytes Resident memory size in bytes.");
    lines.push("# TYPE process_resident_memory_bytes gauge");
    lines.push(`process_resident_memory_bytes ${mem.rss}`);
    lines.push("# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.");
    lines.push("# TYPE process_cpu_seconds_total counter");
    lines.push(`process_cpu_seconds_total ${(cpu.user + cpu.system) / 1e6}`);
    lines.push("# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.");
    lines.push("# TYPE process_start_time_seconds gauge");
    lines.push(`process_start_time_seconds ${this.start}`);
    return `${lines.join("\n")}\n`;
  }
}
