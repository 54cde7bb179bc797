// The CNI library's own logic: config loading, CNI_* environment, per-plugin stdin config,
// result parsing, plugin error objects, the result cache and conf_template rendering. Plugins
// here are small shell scripts that record what they were given (the real plugins run in
// test/integration/cni.test.ts).
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { Fields, Logger } from "../../src/base/log.js";
import {
  buildEnv,
  buildPluginConfig,
  CniManager,
  CniPluginError,
  capabilityArgsFor,
  loadConfDir,
  parseConf,
  parseConfList,
  podCniArgs,
  ResultCache,
  renderConfTemplate,
  TEMPLATE_CONF_FILE,
  templateDataFor,
} from "../../src/core/cni/index.js";
import { compareVersions, parseResult, supportsCheck } from "../../src/core/cni/version.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

function recordingLog(): Logger & { warnings: Fields[] } {
  const warnings: Fields[] = [];
  const l: Logger & { warnings: Fields[] } = {
    warnings,
    trace() {},
    debug() {},
    info() {},
    warn(msg, f) {
      warnings.push({ msg, ...f });
    },
    error() {},
    child: () => l,
    enabled: () => true,
  };
  return l;
}

const list = (name: string, plugins: unknown[] = [{ type: "bridge" }], extra: Record<string, unknown> = {}) =>
  JSON.stringify({ cniVersion: "1.0.0", name, plugins, ...extra });

describe("CNI config loading", () => {
  let dir: string;
  before(async () => {
    dir = await makeTempDir("cni-unit");
  });
  after(async () => {
    await removeTempDir(dir);
  });

  it("reads lists lowest name first, wraps .conf/.json, skips invalid files with a reason, honours max_conf_num", async () => {
    const d = path.join(dir, "order");
    mkdirSync(d);
    writeFileSync(path.join(d, "30-c.conflist"), list("c"));
    writeFileSync(path.join(d, "10-a.conf"), JSON.stringify({ cniVersion: "0.4.0", name: "a", type: "ptp" }));
    writeFileSync(path.join(d, "05-broken.conflist"), "{ not json");
    writeFileSync(path.join(d, "07-noplugins.conflist"), JSON.stringify({ name: "x", plugins: [] }));
    writeFileSync(path.join(d, "20-b.json"), JSON.stringify({ name: "b", type: "macvlan" }));
    writeFileSync(path.join(d, "00-ignored.txt"), list("ignored"));
    mkdirSync(path.join(d, "01-dir.conflist"));
    const log = recordingLog();
    const all = await loadConfDir(d, 0, log);
    assert.deepEqual(
      all.networks.map((n) => n.name),
      ["a", "b", "c"],
    );
    const a = all.networks[0]!;
    assert.equal(a.cniVersion, "0.4.0");
    assert.deepEqual(a.plugins, [{ cniVersion: "0.4.0", name: "a", type: "ptp" }]);
    assert.equal(a.source, path.join(d, "10-a.conf"));
    assert.deepEqual(
      all.skipped.map((s) => path.basename(s.file)),
      ["01-dir.conflist", "05-broken.conflist", "07-noplugins.conflist"],
    );
    assert.match(all.skipped[1]!.reason, /invalid JSON/);
    assert.match(all.skipped[2]!.reason, /no plugins in list/);
    assert.equal(log.warnings.length, 3);
    assert.equal(log.warnings[1]!["file"], path.join(d, "05-broken.conflist"));

    assert.deepEqual(
      (await loadConfDir(d, 1)).networks.map((n) => n.name),
      ["a"],
    );
    assert.deepEqual(
      (await loadConfDir(d, 2)).networks.map((n) => n.name),
      ["a", "b"],
    );
  });

  it("fails with 'no network config found in <dir>' when nothing is usable", async () => {
    const d = path.join(dir, "empty");
    mkdirSync(d);
    await assert.rejects(loadConfDir(d, 1), new RegExp(`^Error: no network config found in ${d}$`));
    writeFileSync(path.join(d, "10-bad.conf"), JSON.stringify({ name: "x" }));
    await assert.rejects(loadConfDir(d, 1), /no network config found in .*empty: .*no "type"/);
    await assert.rejects(loadConfDir(path.join(dir, "missing"), 1), /no network config found in .*missing/);
  });

  it("validates lists", () => {
    assert.throws(() => parseConfList(JSON.stringify({ plugins: [{ type: "x" }] })), /no "name"/);
    assert.throws(() => parseConfList(list("n", [{}])), /plugins\[0\]: plugin has no "type"/);
    assert.equal(parseConfList(list("n", [{ type: "x" }], { disableCheck: "true" })).disableCheck, true);
    assert.equal(parseConfList(list("n", [{ type: "x" }], { disableCheck: true })).disableCheck, true);
    assert.equal(parseConfList(list("n")).disableCheck, false);
    assert.throws(() => parseConfList(list("n", [{ type: "x" }], { disableCheck: "yes" })), /disableCheck/);
    assert.throws(() => parseConf(list("n")), /name it \*\.conflist/);
  });
});

describe("CNI invocation pieces", () => {
  it("builds the CNI_* environment with CNI_ARGS in order and sbin dirs on PATH", () => {
    const env = buildEnv(
      "ADD",
      {
        containerId: "abc",
        netns: "/var/run/netns/cni-1",
        ifName: "eth0",
        args: podCniArgs("abc", { namespace: "ns1", name: "pod1", uid: "u-1" }),
      },
      ["/opt/cni/bin", "/usr/lib/cni"],
      { PATH: "/usr/bin", HOME: "/root" },
    );
    assert.equal(env["CNI_COMMAND"], "ADD");
    assert.equal(env["CNI_CONTAINERID"], "abc");
    assert.equal(env["CNI_NETNS"], "/var/run/netns/cni-1");
    assert.equal(env["CNI_IFNAME"], "eth0");
    assert.equal(
      env["CNI_ARGS"],
      "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=pod1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1",
    );
    assert.equal(env["CNI_PATH"], "/opt/cni/bin:/usr/lib/cni");
    assert.equal(env["HOME"], "/root");
    assert.ok(env["PATH"]!.startsWith("/usr/bin:"));
    assert.ok(env["PATH"]!.split(":").includes("/usr/sbin"));
  });

  it("gives each plugin the list's name and version, prevResult, and only its declared capabilities", () => {
    const caps = capabilityArgsFor({
      portMappings: [
        { hostPort: 8080, containerPort: 80, protocol: "TCP" },
        { hostPort: 0, containerPort: 81, protocol: "TCP" },
      ],
      dns: { servers: ["10.0.0.10"] },
      bandwidth: undefined,
      ips: [],
    });
    assert.deepEqual(caps, {
      portMappings: [{ hostPort: 8080, containerPort: 80, protocol: "tcp" }],
      dns: { servers: ["10.0.0.10"] },
    });
    const l = { name: "net", cniVersion: "1.0.0" };
    const pm = JSON.parse(
      buildPluginConfig(
        l,
        { type: "portmap", name: "other", capabilities: { portMappings: true, bandwidth: true } },
        { cniVersion: "1.0.0", ips: [] },
        caps,
      ).toString(),
    );
    assert.deepEqual(pm, {
      type: "portmap",
      name: "net",
      cniVersion: "1.0.0",
      capabilities: { portMappings: true, bandwidth: true },
      prevResult: { cniVersion: "1.0.0", ips: [] },
      runtimeConfig: { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: "tcp" }] },
    });
    const br = JSON.parse(
      buildPluginConfig(l, { type: "bridge", runtimeConfig: { stale: 1 } }, undefined, caps).toString(),
    );
    assert.deepEqual(br, { type: "bridge", name: "net", cniVersion: "1.0.0" });
    const off = JSON.parse(
      buildPluginConfig(l, { type: "x", capabilities: { dns: false } }, undefined, caps).toString(),
    );
    assert.equal(off.runtimeConfig, undefined);
  });

  it("reads results of every spec version into one shape", () => {
    const v1 = parseResult(
      {
        cniVersion: "1.0.0",
        interfaces: [
          { name: "cni0", mac: "aa" },
          { name: "eth0", mac: "bb", sandbox: "/ns" },
        ],
        ips: [{ address: "10.1.0.5/24", gateway: "10.1.0.1", interface: 1 }],
        routes: [{ dst: "0.0.0.0/0" }],
        dns: { nameservers: ["1.1.1.1"] },
      },
      "1.0.0",
    );
    assert.deepEqual(v1.ips, [{ address: "10.1.0.5/24", gateway: "10.1.0.1", interface: 1 }]);
    assert.equal(v1.interfaces[1]!.sandbox, "/ns");
    const v02 = parseResult(
      {
        cniVersion: "0.2.0",
        ip4: { ip: "10.2.0.5/16", gateway: "10.2.0.1", routes: [{ dst: "0.0.0.0/0" }] },
      },
      "",
    );
    assert.deepEqual(v02.ips, [{ address: "10.2.0.5/16", gateway: "10.2.0.1" }]);
    assert.deepEqual(v02.routes, [{ dst: "0.0.0.0/0" }]);
    assert.equal(compareVersions("0.4.0", "0.3.1"), 1);
    assert.equal(compareVersions("1.0.0", "1.0"), 0);
    assert.equal(supportsCheck("0.3.1"), false);
    assert.equal(supportsCheck("0.4.0"), true);
    assert.equal(supportsCheck(""), false);
  });
});

describe("CniManager with recording plugins", () => {
  let dir: string;
  let bin: string;
  let confDir: string;
  let cacheDir: string;
  let calls: string;

  // A plugin that appends "<type> <command> <env> <stdin>" to a log and prints a result.
  const plugin = (type: string, body: string) => {
    const f = path.join(bin, type);
    writeFileSync(
      f,
      `#!/bin/sh\nin=$(cat)\nprintf '%s\\t%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n' ${type} "$CNI_COMMAND" "$CNI_IFNAME" "$CNI_NETNS" "$CNI_ARGS" "$CNI_PATH" "$in" >> ${calls}\n${body}\n`,
    );
    chmodSync(f, 0o755);
  };
  const logged = () =>
    readFileSync(calls, "utf8")
      .trim()
      .split("\n")
      .filter(Boolean)
      .map((l) => {
        const [type, cmd, ifName, netns, args, cniPath, stdin] = l.split("\t");
        return {
          type,
          cmd,
          ifName,
          netns,
          args,
          cniPath,
          conf: JSON.parse(stdin!) as Record<string, unknown>,
        };
      });
  // networks are added and deleted concurrently: the order holds within each network's chain; the
  // loopback network's calls are put first so that indexes into the list are fixed
  const inChainOrder = (all: ReturnType<typeof logged>) => [
    ...all.filter((x) => x.ifName === "lo"),
    ...all.filter((x) => x.ifName !== "lo"),
  ];

  const prevIps = (x: { conf: Record<string, unknown> }) =>
    (x.conf["prevResult"] as { ips: unknown[] } | undefined)?.ips;

  before(async () => {
    dir = await makeTempDir("cni-mgr");
    bin = path.join(dir, "bin");
    confDir = path.join(dir, "net.d");
    cacheDir = path.join(dir, "cache");
    calls = path.join(dir, "calls.log");
    mkdirSync(bin);
    mkdirSync(confDir);
    const result = (ip: string) =>
      `[ "$CNI_COMMAND" = ADD ] && printf '%s' '{"cniVersion":"1.0.0","interfaces":[{"name":"'$CNI_IFNAME'","sandbox":"'$CNI_NETNS'"}],"ips":[{"address":"${ip}","interface":0}]}'\nexit 0`;
    plugin("loopback", result("127.0.0.1/8"));
    plugin("fakebr", result("10.9.0.7/24"));
    // Adds an IPv6 address in front of the previous result's one (a chained IPAM-like plugin).
    plugin(
      "fakeip6",
      `[ "$CNI_COMMAND" = ADD ] && printf '%s' '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"'$CNI_NETNS'"}],"ips":[{"address":"fd00::7/64","interface":0},{"address":"10.9.0.7/24","interface":0}]}'\nexit 0`,
    );
    plugin(
      "failer",
      `[ "$CNI_COMMAND" = DEL ] && exit 0\nprintf '%s' '{"cniVersion":"1.0.0","code":11,"msg":"try again later","details":"lease table full"}'\nexit 1`,
    );
    plugin("crasher", `echo "panic: boom" >&2\nexit 2`);
  });
  after(async () => {
    await removeTempDir(dir);
  });

  it("runs ADD in order with prevResult, DEL in reverse with the cached result, CHECK where allowed", async () => {
    writeFileSync(calls, "");
    writeFileSync(
      path.join(confDir, "10-net.conflist"),
      list("fake", [{ type: "fakebr" }, { type: "fakeip6", capabilities: { portMappings: true } }]),
    );
    const cni = new CniManager({ binDirs: ["/nonexistent", bin], confDir, maxConfNum: 1, cacheDir });
    assert.deepEqual(await cni.status(), { ready: true });
    const pod = { namespace: "default", name: "web", uid: "uid-1" };
    const portMappings = [{ hostPort: 80, containerPort: 8080, protocol: "TCP" }];
    const r = await cni.setup("pod1", "/run/netns/x", pod, { portMappings });
    assert.equal(r.ip, "10.9.0.7");
    assert.deepEqual(r.additionalIps, ["fd00::7"]);
    assert.deepEqual(
      r.interfaces["eth0"]!.ips.map((i) => i.address),
      ["fd00::7/64", "10.9.0.7/24"],
    );
    let c = inChainOrder(logged());
    assert.deepEqual(
      c.map((x) => `${x.type}:${x.cmd}:${x.ifName}`),
      ["loopback:ADD:lo", "fakebr:ADD:eth0", "fakeip6:ADD:eth0"],
    );
    assert.equal(c[1]!.netns, "/run/netns/x");
    assert.equal(c[1]!.cniPath, `/nonexistent:${bin}`);
    assert.match(c[1]!.args!, /^IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;/);
    assert.equal(c[0]!.conf["cniVersion"], "0.3.1");
    assert.equal(c[1]!.conf["prevResult"], undefined);
    assert.equal(c[1]!.conf["runtimeConfig"], undefined);
    assert.deepEqual(prevIps(c[2]!), [{ address: "10.9.0.7/24", interface: 0 }]);
    assert.deepEqual(c[2]!.conf["runtimeConfig"], {
      portMappings: [{ hostPort: 80, containerPort: 8080, protocol: "tcp" }],
    });

    writeFileSync(calls, "");
    await cni.check("pod1", "/run/netns/x", pod);
    c = logged();
    // loopback's list is 0.3.1 (no CHECK); the 1.0.0 list is checked with the cached result.
    assert.deepEqual(
      c.map((x) => `${x.type}:${x.cmd}`),
      ["fakebr:CHECK", "fakeip6:CHECK"],
    );
    assert.equal(prevIps(c[0]!)?.length, 2);

    writeFileSync(calls, "");
    // After a "restart", without repeating the capabilities: DEL gets them from the cache.
    await new CniManager({ binDirs: [bin], confDir, maxConfNum: 1, cacheDir }).teardown(
      "pod1",
      "/run/netns/x",
      pod,
    );
    c = inChainOrder(logged());
    assert.deepEqual(
      c.map((x) => `${x.type}:${x.cmd}:${x.ifName}`),
      ["loopback:DEL:lo", "fakeip6:DEL:eth0", "fakebr:DEL:eth0"],
    );
    assert.equal(prevIps(c[1]!)?.length, 2);
    assert.equal(prevIps(c[2]!)?.length, 2);
    assert.equal(c[0]!.conf["prevResult"], undefined, "0.3.1 lists get no prevResult on DEL");
    assert.deepEqual(c[1]!.conf["runtimeConfig"], {
      portMappings: [{ hostPort: 80, containerPort: 8080, protocol: "tcp" }],
    });
    assert.deepEqual(await new ResultCache(cacheDir).forContainer("pod1"), []);

    // disableCheck: no CHECK at all; CHECK without a cached result is an error.
    writeFileSync(
      path.join(confDir, "10-net.conflist"),
      list("fake", [{ type: "fakebr" }], { disableCheck: true }),
    );
    writeFileSync(calls, "");
    await cni.check("pod1", "/run/netns/x", pod);
    assert.deepEqual(logged(), []);
    writeFileSync(path.join(confDir, "10-net.conflist"), list("fake", [{ type: "fakebr" }]));
    await assert.rejects(cni.check("pod1", "/run/netns/x", pod), /no cached result for container pod1/);
  });

  it("turns plugin failures into errors naming the plugin and cleans up a failed setup", async () => {
    writeFileSync(
      path.join(confDir, "10-net.conflist"),
      list("flaky", [{ type: "fakebr" }, { type: "failer" }]),
    );
    const cni = new CniManager({ binDirs: [bin], confDir, maxConfNum: 1, cacheDir });
    writeFileSync(calls, "");
    const err = await cni
      .setup("pod2", "/ns", { namespace: "n", name: "p", uid: "u" })
      .catch((e: unknown) => e);
    assert.ok(err instanceof CniPluginError);
    assert.equal(
      err.message,
      'plugin type="failer" name="flaky" failed (add): try again later: lease table full',
    );
    assert.equal(err.code, 11);
    assert.deepEqual(
      inChainOrder(logged()).map((x) => `${x.type}:${x.cmd}`),
      ["loopback:ADD", "loopback:DEL", "fakebr:ADD", "failer:ADD", "failer:DEL", "fakebr:DEL"],
    );
    assert.deepEqual(await new ResultCache(cacheDir).forContainer("pod2"), []);

    writeFileSync(path.join(confDir, "10-net.conflist"), list("crashy", [{ type: "crasher" }]));
    await assert.rejects(
      cni.setup("pod3", "/ns", { namespace: "n", name: "p", uid: "u" }),
      /^CniPluginError: plugin type="crasher" name="crashy" failed \(add\): exit status 2: panic: boom$/,
    );
  });

  it("renders conf_template into conf_dir on a pod CIDR when no config is loaded", async () => {
    const conf = path.join(dir, "tmpl.d");
    mkdirSync(conf);
    const tmplFile = path.join(dir, "template.json");
    writeFileSync(
      tmplFile,
      '{"cniVersion":"1.0.0","name":"tmpl","plugins":[{"type":"fakebr","subnet":"{{.PodCIDR}}"}]}',
    );
    const cni = new CniManager({
      binDirs: [bin],
      confDir: conf,
      maxConfNum: 1,
      cacheDir,
      confTemplate: tmplFile,
    });
    assert.equal((await cni.status()).ready, false);
    assert.equal(await cni.updatePodCIDR(""), undefined);
    const written = await cni.updatePodCIDR("10.244.1.0/24");
    assert.equal(written, path.join(conf, TEMPLATE_CONF_FILE));
    assert.equal(JSON.parse(readFileSync(written!, "utf8")).plugins[0].subnet, "10.244.1.0/24");
    assert.deepEqual(await cni.status(), { ready: true });
    // Once ready, a new CIDR leaves the file alone.
    assert.equal(await cni.updatePodCIDR("10.244.2.0/24"), undefined);
    assert.equal(JSON.parse(readFileSync(written!, "utf8")).plugins[0].subnet, "10.244.1.0/24");
  });
});

describe("conf_template rendering", () => {
  // The shape of a kubelet-era bridge template: one host-local range per CIDR, a default route
  // per address family, separators only between items.
  const template = `{
  "cniVersion": "1.0.0",
  "name": "pods",
  "first": "{{.PodCIDR}}",
  "plugins": [{
    "type": "bridge",
    "ipam": {
      "type": "host-local",
      "ranges": [
        {{- range $i, $range := .PodCIDRRanges}}{{if $i}},{{end}}
        [{"subnet": "{{$range}}"}]
        {{- end}}
      ],
      "routes": [
        {{- range $i, $route := .Routes}}{{if $i}}, {{end}}{"dst": "{{$route}}"}{{- end}}
      ]
    }
  }]
}
{{- /* trailing comment */ -}}
`;

  it("renders one CIDR", () => {
    const out = renderConfTemplate(template, templateDataFor("10.244.3.0/24"));
    const j = JSON.parse(out);
    assert.equal(j.first, "10.244.3.0/24");
    assert.deepEqual(j.plugins[0].ipam.ranges, [[{ subnet: "10.244.3.0/24" }]]);
    assert.deepEqual(j.plugins[0].ipam.routes, [{ dst: "0.0.0.0/0" }]);
    assert.ok(out.endsWith("}"), "trailing whitespace and comment trimmed");
    assert.match(out, /"ranges": \[\n {8}\[\{"subnet"/);
  });

  it("renders dual-stack CIDRs with separators and IPv4 route first", () => {
    const data = templateDataFor("fd00:10::/64, 10.244.3.0/24");
    assert.deepEqual(data, {
      podCIDR: "fd00:10::/64",
      podCIDRRanges: ["fd00:10::/64", "10.244.3.0/24"],
      routes: ["0.0.0.0/0", "::/0"],
    });
    const j = JSON.parse(renderConfTemplate(template, data));
    assert.deepEqual(j.plugins[0].ipam.ranges, [[{ subnet: "fd00:10::/64" }], [{ subnet: "10.244.3.0/24" }]]);
    assert.deepEqual(j.plugins[0].ipam.routes, [{ dst: "0.0.0.0/0" }, { dst: "::/0" }]);
  });

  it("supports range over dot, if/else if/else, $ and literals", () => {
    const d = templateDataFor("10.1.0.0/16,10.2.0.0/16");
    assert.equal(
      renderConfTemplate("{{range .PodCIDRRanges}}<{{.}}|{{$.PodCIDR}}>{{end}}", d),
      "<10.1.0.0/16|10.1.0.0/16><10.2.0.0/16|10.1.0.0/16>",
    );
  });

  it("rejects what it does not implement, and unknown fields", () => {
    const d = templateDataFor("10.1.0.0/16");
    assert.throws(() => renderConfTemplate("{{.Nope}}", d), /conf_template: can't evaluate field Nope/);
    assert.throws(() => renderConfTemplate("{{.PodCIDR | printf}}", d), /unsupported/);
    assert.throws(() => renderConfTemplate("{{range .Routes}}x", d), /missing \{\{end\}\}/);
    assert.throws(() => renderConfTemplate("{{end}}", d), /unexpected \{\{end\}\}/);
    assert.throws(() => renderConfTemplate("{{.PodCIDR", d), /unclosed action/);
    assert.throws(() => renderConfTemplate("{{with .PodCIDR}}{{end}}", d), /\{\{with\}\} is not supported/);
    assert.throws(() => templateDataFor("10.1.0.0/33"), /invalid pod CIDR/);
    assert.equal(renderConfTemplate("{{if .PodCIDR}}a{{else if .Routes}}b{{else}}c{{end}}", d), "a");
    assert.equal(
      renderConfTemplate("{{if .PodCIDR}}a{{else if .Routes}}b{{else}}c{{end}}", { ...d, podCIDR: "" }),
      "b",
    );
    assert.equal(
      renderConfTemplate("{{if .PodCIDR}}a{{else if .Routes}}b{{else}}c{{end}}", {
        podCIDR: "",
        podCIDRRanges: [],
        routes: [],
      }),
      "c",
    );
    assert.equal(
      renderConfTemplate('{{range $r := .Routes}}{{$r}}{{else}}none{{end}} {{"lit"}} {{1}}', {
        podCIDR: "",
        podCIDRRanges: [],
        routes: [],
      }),
      "none lit 1",
    );
  });
});
