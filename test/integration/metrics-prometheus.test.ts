// Issue 12 item 2: berthd's `[metrics] address` scraped by the real Prometheus (Debian's package)
// on loopback, every second. The test pulls three images (and one that does not exist) through
// berthd, runs a container task and removes an image with a synchronous GC, then asks
// Prometheus's HTTP API for every family and checks the values against what it did.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { berth, ctr, ok } from "../helpers/ctr.js";
import { type Daemon, killShimsOf, startBerthd } from "../helpers/daemons.js";
import { type RegistryWithBusybox, registryWithBusybox } from "../helpers/fixtures.js";
import { busyboxImageWith, pushImage } from "../helpers/images.js";
import { freePort } from "../helpers/registry.js";
import { makeTempDir, removeTempDir, unmountAll } from "../helpers/tmp.js";

const PROMETHEUS_BIN = "/usr/bin/prometheus";
const REPO = "test/metrics";
const TASK = "m-task";

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

describe("metrics: the real Prometheus scrapes berthd", () => {
  let fx: RegistryWithBusybox;
  let d: Daemon;
  let prom: ChildProcess | undefined;
  let promUrl: string;
  let tmp: string;
  let ref3: string;
  let promLog = "";
  const killProm = () => {
    if (prom?.pid && prom.exitCode === null && prom.signalCode === null) prom.kill("SIGKILL");
  };

  /** An instant query; its samples. */
  const query = async (expr: string): Promise<Sample[]> => {
    const res = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(expr)}`);
    const body = (await res.json()) as { status: string; data?: { result: Sample[] }; error?: string };
    assert.equal(body.status, "success", `${expr}: ${body.error}`);
    return body.data!.result;
  };
  /** Poll `expr` until `want` holds for its samples (scrapes come every second); returns them. */
  const until = async (expr: string, want: (s: Sample[]) => boolean, ms = 20_000): Promise<Sample[]> => {
    const end = Date.now() + ms;
    let last: Sample[] = [];
    while (Date.now() < end) {
      last = await query(expr);
      if (want(last)) return last;
      await sleep(250);
    }
    assert.fail(
      `${expr}: got ${JSON.stringify(last)}\nprometheus: ${promLog.slice(-2000)}\nberthd: ${d.logs().slice(-2000)}`,
    );
  };
  /** The one sample's value (NaN when there are several; 0 when there is none). */
  const num = (s: Sample[]) => (s.length === 0 ? 0 : s.length === 1 ? Number(s[0]!.value[1]) : Number.NaN);
  const equals = (n: number) => (s: Sample[]) => s.length === 1 && num(s) === n;
  const present = (s: Sample[]) => s.length > 0;

  before(async () => {
    tmp = await makeTempDir("metrics-prometheus");
    fx = await registryWithBusybox(REPO);
    // a third image with a layer of its own
    await pushImage(fx.reg.url, REPO, "3", busyboxImageWith({ Cmd: ["sh"] }, { name: "metrics", data: "3" }));
    ref3 = `${fx.reg.host}/${REPO}:3`;
    const metricsPort = await freePort();
    d = await startBerthd({
      config: `version = 2\n[metrics]\n  address = "127.0.0.1:${metricsPort}"\n  grpc_histogram = true\n`,
    });

    const promPort = await freePort();
    promUrl = `http://127.0.0.1:${promPort}`;
    const cfg = join(tmp, "prometheus.yml");
    writeFileSync(
      cfg,
      [
        "global:",
        "  scrape_interval: 1s",
        "  scrape_timeout: 1s",
        "scrape_configs:",
        "  - job_name: berthd",
        "    metrics_path: /v1/metrics",
        "    static_configs:",
        `      - targets: ["127.0.0.1:${metricsPort}"]`,
        "",
      ].join("\n"),
    );
    prom = spawn(
      PROMETHEUS_BIN,
      [
        `--config.file=${cfg}`,
        `--storage.tsdb.path=${join(tmp, "tsdb")}`,
        `--web.listen-address=127.0.0.1:${promPort}`,
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    const keep = (c: Buffer) => {
      promLog = (promLog + c.toString()).slice(-64 << 10);
    };
    prom.stdout!.on("data", keep);
    prom.stderr!.on("data", keep);
    process.once("exit", killProm);
    const end = Date.now() + 30_000;
    for (;;) {
      const ready = await fetch(`${promUrl}/-/ready`).then(
        (r) => r.ok,
        () => false,
      );
      if (ready) break;
      if (Date.now() > end || prom.exitCode !== null) assert.fail(`prometheus did not start:\n${promLog}`);
      await sleep(200);
    }
  });

  after(async () => {
    if (d) {
      await berth(d.address, ["t", "rm", "-f", TASK]).catch(() => {});
      await berth(d.address, ["c", "rm", TASK]).catch(() => {});
      killShimsOf(d.address);
      await d.cleanup();
    }
    if (prom?.pid && prom.exitCode === null && prom.signalCode === null) {
      const exited = new Promise((r) => prom!.once("exit", r));
      process.kill(prom.pid, "SIGTERM");
      const timer = setTimeout(killProm, 10_000);
      await exited;
      clearTimeout(timer);
    }
    process.off("exit", killProm);
    await fx?.reg.cleanup();
    if (tmp) {
      unmountAll(tmp);
      await removeTempDir(tmp);
    }
  });

  it("berthd is a healthy target", async () => {
    await until('up{job="berthd"}', equals(1));
  });

  it("pulls: 3 pulled, 1 failed by reason, bytes fetched = content store size, layers, phases", async () => {
    for (const ref of [fx.ref1, fx.refMulti, ref3])
      ok(await berth(d.address, ["images", "pull", "--plain-http", ref]), `pull ${ref}`);
    const missing = await berth(d.address, [
      "images",
      "pull",
      "--plain-http",
      `${fx.reg.host}/${REPO}:missing`,
    ]);
    assert.notEqual(missing.code, 0, "pulling a tag that does not exist fails");

    await until("berth_pulls_total", equals(3));
    await until('berth_pull_failures_total{reason="not_found"}', equals(1));
    await until('sum(berth_pull_failures_total{reason!="not_found"})', (s) => num(s) === 0);
    // every pull wrote only blobs it fetched, and nothing has been collected yet
    const size = num(await until("berth_content_store_size_bytes", (s) => num(s) > 0));
    await until("berth_pull_fetched_bytes_total", equals(size));
    // images 1 and multi share their linux/amd64 layer; image 3 has its own
    await until("berth_pull_layers_unpacked_total", equals(2));
    for (const phase of ["resolve", "metadata", "layers", "record"])
      await until(`berth_pull_phase_seconds_count{phase="${phase}"}`, equals(3));
    // the failed pull is timed too
    await until("berth_pull_duration_seconds_count", equals(4));
    await until('berth_snapshots{snapshotter="overlayfs",kind="committed"}', equals(2));
  });

  it("gRPC server families with grpc-go's names and labels", async () => {
    ok(await ctr(d.address, ["images", "ls"]), "ctr images ls");
    const t = 'grpc_service="containerd.services.transfer.v1.Transfer",grpc_method="Transfer"';
    await until(`grpc_server_started_total{${t},grpc_type="unary"}`, equals(4));
    await until(`grpc_server_handled_total{${t},grpc_code="OK"}`, equals(3));
    await until(`grpc_server_handled_total{${t},grpc_code="NotFound"}`, equals(1));
    await until(`grpc_server_handling_seconds_count{${t}}`, equals(4));
    await until(`grpc_server_msg_received_total{${t}}`, equals(4));
    const images = 'grpc_service="containerd.services.images.v1.Images"';
    await until(`grpc_server_handled_total{${images},grpc_method="List",grpc_code="OK"}`, (s) => num(s) >= 1);
    await until(`grpc_server_msg_sent_total{${images},grpc_method="List"}`, (s) => num(s) >= 1);
    // le buckets end in +Inf with the count
    const inf = await until(`grpc_server_handling_seconds_bucket{${t},le="+Inf"}`, equals(4));
    assert.equal(inf[0]!.metric.grpc_type, "unary");
  });

  it("a running task's cgroup families (containerd's names, container_id and namespace labels)", async () => {
    ok(await berth(d.address, ["c", "create", fx.ref1, TASK, "busybox", "sleep", "300"]), "c create");
    ok(await berth(d.address, ["t", "start", "-d", TASK]), "t start -d");
    const sel = `container_id="${TASK}",namespace="default"`;
    // runc manages v1 controllers on a legacy or hybrid host (this one), the unified tree on v2
    const v1 =
      (
        await until(
          `{__name__=~"container_memory_usage_usage_bytes|container_memory_usage_bytes",${sel}}`,
          present,
        )
      )[0]!.metric.__name__ === "container_memory_usage_usage_bytes";
    if (v1) {
      await until(`container_memory_usage_usage_bytes{${sel}}`, (s) => num(s) > 0);
      await until(`container_memory_usage_limit_bytes{${sel}}`, (s) => num(s) > 0);
      await until(`container_cpu_total_nanoseconds{${sel}}`, (s) => num(s) > 0);
      await until(`container_cpu_user_nanoseconds{${sel}}`, present);
      await until(`container_cpu_kernel_nanoseconds{${sel}}`, present);
      await until(`container_per_cpu_nanoseconds{${sel}}`, present);
      await until(`container_memory_rss_bytes{${sel}}`, present);
    } else {
      await until(`container_memory_usage_bytes{${sel}}`, (s) => num(s) > 0);
      await until(`container_cpu_usage_microseconds{${sel}}`, (s) => num(s) > 0);
      await until(`container_cpu_user_usage_microseconds{${sel}}`, present);
    }
    await until(`container_pids_current{${sel}}`, equals(1));
    await until(`container_pids_limit{${sel}}`, present);
    await until('berth_tasks{state="running"}', equals(1));
    await until("berth_shims_running", equals(1));

    // gone with the task
    ok(await berth(d.address, ["t", "kill", "-s", "SIGKILL", TASK]), "kill");
    await until('berth_tasks{state="stopped"}', equals(1));
    ok(await berth(d.address, ["t", "rm", TASK]), "t rm");
    await until(`container_pids_current{${sel}}`, (s) => s.length === 0);
    await until("berth_shims_running", equals(0));
    ok(await berth(d.address, ["c", "rm", TASK]), "c rm");
  });

  it("GC runs, duration and objects removed", async () => {
    const before = await query('berth_gc_runs_total{result="ok"}');
    ok(await ctr(d.address, ["images", "rm", "--sync", ref3]), "images rm --sync");
    await until('berth_gc_runs_total{result="ok"}', (s) => num(s) > num(before));
    await until("berth_gc_duration_seconds_count", (s) => num(s) >= 1);
    // image 3's index-less tree: manifest, config, layer and its snapshot
    await until("berth_gc_objects_removed_total", (s) => num(s) >= 4);
    await until('berth_snapshots{snapshotter="overlayfs",kind="committed"}', equals(1));
  });

  it("config reloads and the Node process", async () => {
    await until('berth_config_reloads_total{result="ok"}', present);
    await until('berth_config_reloads_total{result="failed"}', present);
    await until("nodejs_eventloop_lag_seconds", present);
    await until("nodejs_heap_size_used_bytes", (s) => num(s) > 0);
    await until("sum(nodejs_gc_duration_seconds_count)", (s) => num(s) > 0);
    await until("process_resident_memory_bytes", (s) => num(s) > 0);
  });
});
