// The metrics exposition (src/core/metrics.ts, src/core/metrics/*): gRPC counters bumped by the
// real gRPC server for real calls, the pull/GC/config-reload hooks, the cgroup stats
// decoder on hand-encoded v1 and v2 messages, and prom-client staying unloaded until a metrics
// listener is asked for.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { BerthError, errNotFound, GrpcCode } from "../../src/base/errdefs.js";
import { CGROUPS_V1_TYPE, CGROUPS_V2_TYPE, cgroupSamples } from "../../src/core/metrics/cgroup-stats.js";
import { failureReason, PrometheusExporter } from "../../src/core/metrics/prometheus.js";
import {
  BucketCounts,
  configReloads,
  Metrics,
  metricsHooks,
  PullTimer,
  recordConfigReload,
} from "../../src/core/metrics.js";
import { Content } from "../../src/gen/containerd/services/content/v1/content_pb.js";
import { Namespaces } from "../../src/gen/containerd/services/namespaces/v1/namespace_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { H2GrpcServer } from "../../src/grpc/h2server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

// --- a minimal protobuf writer for the cgroups messages --------------------------------------

const varint = (n: number): number[] => {
  const out: number[] = [];
  while (n >= 128) {
    out.push((n % 128) | 128);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
};
const u64 = (field: number, v: number) => [...varint(field * 8), ...varint(v)];
const bytes = (field: number, b: number[]) => [...varint(field * 8 + 2), ...varint(b.length), ...b];
const text = (field: number, s: string) => bytes(field, [...Buffer.from(s)]);
const packed = (field: number, vs: number[]) => bytes(field, vs.flatMap(varint));

/** Sample lines of a family: `{labels} value` → value, keyed by the label text. */
function samples(exposition: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of exposition.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const sp = line.lastIndexOf(" ");
    out.set(line.slice(name.length, sp), Number(line.slice(sp + 1)));
  }
  return out;
}

describe("metrics: gRPC counters from the gRPC server, exposed by prom-client", () => {
  let dir: string;
  let server: H2GrpcServer;
  let conn: Connection;
  let metrics: Metrics;
  let exporter: PrometheusExporter;

  before(async () => {
    dir = await makeTempDir("metrics-unit");
    metrics = new Metrics();
    server = new H2GrpcServer({ counters: (p, k) => metrics.grpcMethod(p, k) });
    server.addService(Namespaces, {
      async list() {
        return { namespaces: [{ name: "a", labels: {} }] };
      },
      async get(req: { name: string }) {
        throw errNotFound(`namespace ${req.name}`);
      },
      async create() {
        return {};
      },
    } as never);
    server.addService(Content, {
      async *read() {
        for (let i = 0; i < 3; i++) yield { offset: BigInt(i), data: new Uint8Array([i]) };
      },
    } as never);
    await server.listen(join(dir, "s.sock"));
    conn = new Connection(join(dir, "s.sock"));
    exporter = await PrometheusExporter.create(metrics, {});
  });

  after(async () => {
    conn?.close();
    await server?.shutdown(1000);
    exporter?.uninstall();
    if (dir) await removeTempDir(dir);
  });

  it("started, handled by code, messages, and the histogram only while it is on", async () => {
    const ns = await conn.client(Namespaces);
    await ns.list({});
    await ns.list({});
    await assert.rejects(ns.get({ name: "x" }));
    const content = await conn.client(Content);
    let n = 0;
    for await (const _ of content.read({ digest: "sha256:00" }, { namespace: "default" })) n++;
    assert.equal(n, 3);

    let text = await exporter.render();
    const list =
      'grpc_method="List",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary"';
    const get =
      'grpc_method="Get",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary"';
    const read =
      'grpc_method="Read",grpc_service="containerd.services.content.v1.Content",grpc_type="server_stream"';
    assert.equal(samples(text, "grpc_server_started_total").get(`{${list}}`), 2);
    assert.equal(samples(text, "grpc_server_started_total").get(`{${get}}`), 1);
    assert.equal(samples(text, "grpc_server_handled_total").get(`{grpc_code="OK",${list}}`), 2);
    assert.equal(samples(text, "grpc_server_handled_total").get(`{grpc_code="NotFound",${get}}`), 1);
    assert.equal(samples(text, "grpc_server_handled_total").get(`{grpc_code="OK",${read}}`), 1);
    assert.equal(samples(text, "grpc_server_msg_received_total").get(`{${list}}`), 2);
    assert.equal(samples(text, "grpc_server_msg_sent_total").get(`{${list}}`), 2);
    assert.equal(samples(text, "grpc_server_msg_sent_total").get(`{${get}}`), 0);
    assert.equal(samples(text, "grpc_server_msg_sent_total").get(`{${read}}`), 3);
    // a method served but never called is there with 0 (grpc-go pre-registers them too)
    assert.equal(samples(text, "grpc_server_started_total").get(`{${list.replace("List", "Create")}}`), 0);
    assert.doesNotMatch(text, /grpc_server_handling_seconds/);

    metrics.setGrpcHistogram(true);
    await ns.list({});
    text = await exporter.render();
    assert.match(text, /# TYPE grpc_server_handling_seconds histogram/);
    assert.equal(samples(text, "grpc_server_handling_seconds_count").get(`{${list}}`), 1);
    assert.equal(samples(text, "grpc_server_handling_seconds_bucket").get(`{${list},le="+Inf"}`), 1);
    assert.ok((samples(text, "grpc_server_handling_seconds_sum").get(`{${list}}`) ?? -1) >= 0);
    // methods without a timed call are left out of the histogram
    assert.equal(samples(text, "grpc_server_handling_seconds_count").get(`{${get}}`), undefined);
    metrics.setGrpcHistogram(false);
    text = await exporter.render();
    assert.doesNotMatch(text, /grpc_server_handling_seconds/);
    assert.equal(samples(text, "grpc_server_handled_total").get(`{grpc_code="OK",${list}}`), 3);
  });

  it("pull and GC hooks feed berth_* families only while installed; config reloads always count", async () => {
    const hooks = () => metricsHooks;
    assert.equal(hooks().pull, undefined);
    const idle = new PullTimer();
    idle.mark("resolve"); // no observer: nothing to do, nothing thrown
    idle.finished();

    exporter.install();
    const ok = new PullTimer();
    hooks().pull?.fetched(1000);
    hooks().pull?.fetched(24);
    hooks().pull?.layerUnpacked();
    ok.mark("resolve");
    ok.mark("metadata");
    ok.mark("layers");
    ok.mark("record");
    ok.finished();
    const bad = new PullTimer();
    bad.mark("resolve");
    bad.finished(new BerthError("not found", "ref"));
    hooks().gc?.collected({ elapsedMs: 12, removed: 5 });
    hooks().gc?.failed(new Error("x"));
    const before = configReloads.ok;
    recordConfigReload(true);
    recordConfigReload(false);
    exporter.uninstall();
    assert.equal(hooks().pull, undefined);
    assert.equal(hooks().gc, undefined);

    const text = await exporter.render();
    assert.equal(samples(text, "berth_pulls_total").get(""), 1);
    assert.equal(samples(text, "berth_pull_failures_total").get('{reason="not_found"}'), 1);
    assert.equal(samples(text, "berth_pull_fetched_bytes_total").get(""), 1024);
    assert.equal(samples(text, "berth_pull_layers_unpacked_total").get(""), 1);
    assert.equal(samples(text, "berth_pull_phase_seconds_count").get('{phase="resolve"}'), 2);
    assert.equal(samples(text, "berth_pull_phase_seconds_count").get('{phase="record"}'), 1);
    assert.equal(samples(text, "berth_pull_duration_seconds_count").get(""), 2);
    assert.equal(samples(text, "berth_gc_runs_total").get('{result="ok"}'), 1);
    assert.equal(samples(text, "berth_gc_runs_total").get('{result="failed"}'), 1);
    assert.equal(samples(text, "berth_gc_objects_removed_total").get(""), 5);
    assert.equal(samples(text, "berth_gc_duration_seconds_sum").get(""), 0.012);
    assert.equal(samples(text, "berth_config_reloads_total").get('{result="ok"}'), before + 1);
    assert.ok((samples(text, "berth_config_reloads_total").get('{result="failed"}') ?? 0) >= 1);
    // Node's process metrics
    for (const f of [
      "nodejs_eventloop_lag_seconds",
      "nodejs_heap_size_used_bytes",
      "process_resident_memory_bytes",
    ])
      assert.ok((samples(text, f).get("") ?? 0) >= 0, f);
    assert.match(text, /# TYPE nodejs_gc_duration_seconds histogram/);
  });

  it("failure reasons are error kinds", () => {
    assert.equal(failureReason(new BerthError("unauthenticated")), "unauthenticated");
    assert.equal(failureReason(new BerthError("deadline exceeded")), "deadline_exceeded");
    assert.equal(failureReason(new DOMException("x", "AbortError")), "canceled");
    assert.equal(failureReason(new Error("x")), "unknown");
    assert.equal(GrpcCode.NotFound, 5);
  });

  it("BucketCounts: per-bucket counts, +Inf slot, sum and count", () => {
    const h = new BucketCounts([1, 2]);
    for (const v of [0.5, 1, 1.5, 3]) h.observe(v);
    assert.deepEqual([...h.counts], [2, 1, 1]);
    assert.equal(h.sum, 6);
    assert.equal(h.count, 4);
  });
});

describe("metrics: cgroup stats decoded into containerd's container_* families", () => {
  it("v1: cpu, per-cpu, memory usage entry, pids, blkio with op/device/major/minor", () => {
    const cpuUsage = [...u64(1, 5_000_000_000), ...u64(2, 1_000), ...u64(3, 2_000), ...packed(4, [7, 300])];
    const msg = [
      ...bytes(2, [...u64(1, 3), ...u64(2, 4096)]),
      ...bytes(3, [...bytes(1, cpuUsage), ...bytes(2, [...u64(1, 10), ...u64(2, 2), ...u64(3, 99)])]),
      ...bytes(4, [
        ...u64(1, 111),
        ...u64(19, 222),
        ...bytes(33, [...u64(1, 1 << 30), ...u64(2, 12345), ...u64(3, 20000), ...u64(4, 1)]),
      ]),
      ...bytes(5, [
        ...bytes(1, [...text(1, "Read"), ...text(2, "sda"), ...u64(3, 8), ...u64(4, 0), ...u64(5, 4096)]),
      ]),
    ];
    const s = cgroupSamples(`types.containerd.io/${CGROUPS_V1_TYPE}`, new Uint8Array(msg));
    const get = (name: string, labels?: Record<string, string>) =>
      s
        .filter((x) => x.name === name && JSON.stringify(x.labels) === JSON.stringify(labels))
        .map((x) => x.value);
    assert.deepEqual(get("container_pids_current"), [3]);
    assert.deepEqual(get("container_pids_limit"), [4096]);
    assert.deepEqual(get("container_cpu_total_nanoseconds"), [5_000_000_000]);
    assert.deepEqual(get("container_cpu_kernel_nanoseconds"), [1000]);
    assert.deepEqual(get("container_cpu_user_nanoseconds"), [2000]);
    assert.deepEqual(get("container_per_cpu_nanoseconds", { cpu: "0" }), [7]);
    assert.deepEqual(get("container_per_cpu_nanoseconds", { cpu: "1" }), [300]);
    assert.deepEqual(get("container_cpu_throttled_time_nanoseconds"), [99]);
    assert.deepEqual(get("container_memory_cache_bytes"), [111]);
    assert.deepEqual(get("container_memory_total_rss_bytes"), [222]);
    assert.deepEqual(get("container_memory_usage_usage_bytes"), [12345]);
    assert.deepEqual(get("container_memory_usage_limit_bytes"), [1 << 30]);
    assert.deepEqual(get("container_memory_usage_max_bytes"), [20000]);
    assert.deepEqual(get("container_memory_usage_failcnt_total"), [1]);
    // no swap entry in the message: no swap families
    assert.deepEqual(get("container_memory_swap_usage_bytes"), []);
    assert.deepEqual(
      get("container_blkio_io_service_bytes_recursive_bytes", {
        op: "Read",
        device: "sda",
        major: "8",
        minor: "0",
      }),
      [4096],
    );
  });

  it("v2: cpu in microseconds, memory usage and limit, io per device", () => {
    const msg = [
      ...bytes(1, [...u64(1, 2), ...u64(2, 100)]),
      ...bytes(2, [...u64(1, 900), ...u64(2, 600), ...u64(3, 300)]),
      ...bytes(4, [...u64(32, 777), ...u64(33, 2 ** 40), ...u64(35, 5)]),
      ...bytes(6, [
        ...bytes(1, [...u64(1, 259), ...u64(2, 1), ...u64(3, 10), ...u64(4, 20), ...u64(5, 1), ...u64(6, 2)]),
      ]),
    ];
    const s = cgroupSamples(CGROUPS_V2_TYPE, new Uint8Array(msg));
    const one = (name: string) => s.find((x) => x.name === name)?.value;
    assert.equal(one("container_pids_current"), 2);
    assert.equal(one("container_cpu_usage_microseconds"), 900);
    assert.equal(one("container_cpu_user_usage_microseconds"), 600);
    assert.equal(one("container_cpu_kernel_usage_microseconds"), 300);
    assert.equal(one("container_memory_usage_bytes"), 777);
    assert.equal(one("container_memory_usage_limit_bytes"), 2 ** 40);
    assert.equal(one("container_memory_swap_Limit_bytes"), 5);
    const rbytes = s.find((x) => x.name === "container_io_rbytes_bytes");
    assert.deepEqual(rbytes?.labels, { major: "259", minor: "1" });
    assert.equal(rbytes?.value, 10);
    assert.equal(one("container_io_wios_total"), 2);
  });

  it("another runtime's stats type gives no samples", () => {
    assert.deepEqual(cgroupSamples("example.com/Other", new Uint8Array([8, 1])), []);
  });
});

describe("metrics: prom-client is loaded only for a metrics listener", () => {
  it("importing the daemon does not load it; serveMetrics does", () => {
    const dist = fileURLToPath(new URL("../../src/cmd/berthd/", import.meta.url));
    const script = `
      import { createRequire } from "node:module";
      const loaded = () => Object.keys(createRequire(import.meta.url).cache).some((k) => k.includes("/prom-client/"));
      await import(${JSON.stringify(join(dist, "daemon.js"))});
      const { Metrics } = await import(${JSON.stringify(join(dist, "../../core/metrics.js"))});
      const before = loaded();
      const { serveMetrics } = await import(${JSON.stringify(join(dist, "http.js"))});
      const s = await serveMetrics("127.0.0.1:0", new Metrics());
      const after = loaded();
      s.close();
      console.log(JSON.stringify({ before, after }));
    `;
    const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
    assert.deepEqual(JSON.parse(out.trim().split("\n").pop()!), { before: false, after: true });
  });
});
