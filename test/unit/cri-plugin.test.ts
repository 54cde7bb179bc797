// The CRI plugin's pieces that need no daemon: which config keys are reported as not
// implemented, the credentials a CRI AuthConfig yields per host, the user an image config names,
// and the Unimplemented answers of methods no part serves.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { BerthError } from "../../src/base/errdefs.js";
import { loadConfig } from "../../src/config/config.js";
import { criCall } from "../../src/cri/context.js";
import { authCredentials, imageUser } from "../../src/cri/images.js";
import { effectiveConfig } from "../../src/cri/runtime-info.js";
import { complete } from "../../src/cri/service.js";
import {
  AuthConfigSchema,
  GetEventsRequestSchema,
  RunPodSandboxRequestSchema,
  RuntimeService,
  StatusRequestSchema,
  VersionRequestSchema,
} from "../../src/gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { EncodedMessage } from "../../src/grpc/service.js";
import { type CriConfig, criDefaults, unimplementedKeys } from "../../src/plugins/cri.js";

const dir = mkdtempSync(join(tmpdir(), "berth-cri-plugin-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function load(toml: string): CriConfig {
  const p = join(dir, `c${Math.random().toString(36).slice(2)}.toml`);
  writeFileSync(p, `version = 2\n${toml}`);
  const { config } = loadConfig(p, { "io.containerd.grpc.v1.cri": criDefaults() });
  return config.plugins["io.containerd.grpc.v1.cri"] as CriConfig;
}

describe("CRI config keys berth does not implement", () => {
  it("reports none for the defaults", () => {
    assert.deepEqual(unimplementedKeys(criDefaults()), []);
  });

  it("reports a key set to a non-default value that nothing reads, and only those", () => {
    const cfg = load(
      [
        '[plugins."io.containerd.grpc.v1.cri"]',
        '  sandbox_image = "registry.example/pause:9"',
        '  stream_server_port = "10010"',
        "  enable_tls_streaming = false",
        "  stats_collect_period = 5",
        '  [plugins."io.containerd.grpc.v1.cri".image_decryption]',
        '    key_model = "cluster"',
        '  [plugins."io.containerd.grpc.v1.cri".cni]',
        '    conf_dir = "/x/net.d"',
        '  [plugins."io.containerd.grpc.v1.cri".containerd]',
        "    discard_unpacked_layers = true",
        '  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]',
        '    runtime_type = "io.containerd.kata.v2"',
        '    runtime_root = "/run/kata"',
        '  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata.options]',
        '    ConfigPath = "/etc/kata.toml"',
        '  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]',
        '    endpoint = ["https://mirror.example"]',
        "",
      ].join("\n"),
    );
    assert.deepEqual(unimplementedKeys(cfg), [
      "containerd.discard_unpacked_layers",
      "containerd.runtimes.kata.runtime_root",
      "image_decryption.key_model",
      "stats_collect_period",
    ]);
  });

  it("takes the list of implemented keys as given", () => {
    const cfg = load('[plugins."io.containerd.grpc.v1.cri"]\n  stream_server_port = "1"\n');
    assert.deepEqual(unimplementedKeys(cfg, ["stream_server_port"]), []);
    assert.deepEqual(unimplementedKeys(cfg, []), ["stream_server_port"]);
  });
});

describe("CRI AuthConfig credentials", () => {
  const auth = (a: MessageInitShape<typeof AuthConfigSchema>) => create(AuthConfigSchema, a);

  it("username/password, identity token and base64 auth, in containerd's order", () => {
    assert.equal(authCredentials(undefined, "r.example"), undefined);
    assert.deepEqual(
      authCredentials(auth({ username: "u", password: "p", identityToken: "t" }), "r.example"),
      {
        username: "u",
        password: "p",
      },
    );
    assert.deepEqual(authCredentials(auth({ identityToken: "tok" }), "r.example"), { identityToken: "tok" });
    const b64 = Buffer.from("alice:pa:ss\0\0").toString("base64");
    assert.deepEqual(authCredentials(auth({ auth: b64 }), "r.example"), {
      username: "alice",
      password: "pa:ss",
    });
    assert.throws(
      () => authCredentials(auth({ auth: Buffer.from("nocolon").toString("base64") }), "h"),
      /invalid/,
    );
    assert.equal(authCredentials(auth({}), "r.example"), undefined);
  });

  it("applies only to the server it names", () => {
    const a = auth({ username: "u", password: "p", serverAddress: "https://r.example:5000" });
    assert.deepEqual(authCredentials(a, "r.example:5000"), { username: "u", password: "p" });
    assert.equal(authCredentials(a, "other.example"), undefined);
    const bare = auth({ username: "u", password: "p", serverAddress: "127.0.0.1:5000" });
    assert.deepEqual(authCredentials(bare, "127.0.0.1:5000"), { username: "u", password: "p" });
  });
});

describe("image config user", () => {
  it("splits uid and user name as CRI reports them", () => {
    assert.deepEqual(imageUser(undefined), { username: "" });
    assert.deepEqual(imageUser(""), { username: "" });
    assert.deepEqual(imageUser("1000"), { uid: 1000n, username: "" });
    assert.deepEqual(imageUser("0:0"), { uid: 0n, username: "" });
    assert.deepEqual(imageUser("nobody"), { username: "nobody" });
    assert.deepEqual(imageUser("www-data:www-data"), { username: "www-data" });
  });
});

describe("CRI service assembly", () => {
  it("fills the methods no part implements with Unimplemented naming the method", async () => {
    const impl = complete(RuntimeService, [
      { version: () => ({ runtimeName: "first" }) },
      { version: () => ({ runtimeName: "second" }), status: () => ({}) },
    ]);
    const v = await impl.version(create(VersionRequestSchema), criCall());
    assert.ok(!(v instanceof EncodedMessage));
    assert.equal(v.runtimeName, "first");
    assert.deepEqual(await impl.status(create(StatusRequestSchema), criCall()), {});
    assert.throws(
      () => impl.runPodSandbox(create(RunPodSandboxRequestSchema), criCall()),
      (err: unknown) =>
        err instanceof BerthError &&
        err.kind === "not implemented" &&
        err.message === "runtime.v1.RuntimeService/RunPodSandbox: not implemented",
    );
    const events = impl.getContainerEvents(create(GetEventsRequestSchema), criCall());
    await assert.rejects(events[Symbol.asyncIterator]().next(), /GetContainerEvents: not implemented/);
  });
});

describe("verbose Status config", () => {
  it("is the effective config with registry credentials masked", () => {
    const cfg = load(
      [
        '[plugins."io.containerd.grpc.v1.cri".registry.configs."r.example".auth]',
        '  username = "u"',
        '  password = "s3cret"',
        '  identitytoken = "tok3n"',
        "",
      ].join("\n"),
    );
    const text = effectiveConfig(cfg, { podCIDR: "10.1.0.0/16" });
    assert.ok(!text.includes("s3cret") && !text.includes("tok3n"), text);
    const parsed = JSON.parse(text) as CriConfig & { podCIDR: string };
    assert.equal(parsed.podCIDR, "10.1.0.0/16");
    assert.equal(parsed.sandbox_image, criDefaults().sandbox_image);
    assert.equal(parsed.registry.configs?.["r.example"]?.auth?.username, "u");
  });
});
