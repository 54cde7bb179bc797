// Reliability group 8: security checks (issue 14), a fixed list run whole in both modes.
//   sockets      under umask 000 the gRPC, ttrpc and debug sockets are 0660 with the configured
//                owner and group, and an unprivileged user cannot connect; without uid/gid, root's.
//   credentials  a unique password (and a wrong one) used for daemon-side push and pull against an
//                htpasswd registry, with berthd at debug level, never appear (plain or inside a
//                Basic header) in berthd's output, `ctr events` seen meanwhile, the clients' output
//                (the failed auth's error included), the metadata DB or any file under root/state.
//   tls          a registry whose certificate comes from the test's own CA is refused by default,
//                and reached once hosts.toml names the CA (`ca`) or says `skip_verify`.
//   writes       during a pull and a run, berthd writes nothing under /tmp, /var/lib or /run outside
//                its root and state (the shim's and runc's /run/containerd layout and ctr's FIFOs
//                excepted), and nothing through its TMPDIR.
//   dirs         berthd refuses to start on a root or state owned by another user or writable by
//                others, naming the directory.
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { chmodSync, chownSync, lstatSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { berth, CTR_BIN, ctr, ok, type RunResult } from "../helpers/ctr.js";
import { type Daemon, killShimsOf, startBerthd } from "../helpers/daemons.js";
import { type RegistryWithBusybox, registryWithBusybox } from "../helpers/fixtures.js";
import { htpasswdLine, type Registry, startRegistry } from "../helpers/registry.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";
import { MODE, report } from "./report.js";

const NS = `security-${process.pid}`;
const USER = "sec-user";
/** Unique per run: found anywhere means it leaked. */
const PASSWORD = `pw-${process.pid}-${Date.now().toString(36)}-Qx7`;
const WRONG = `wrong-${process.pid}-${Date.now().toString(36)}-Zk9`;
const SECRETS = [
  PASSWORD,
  WRONG,
  Buffer.from(`${USER}:${PASSWORD}`).toString("base64"),
  Buffer.from(`${USER}:${WRONG}`).toString("base64"),
];

/** Start berthd as if from a shell whose umask is 000 (the daemon inherits it). */
async function underUmask0<T>(fn: () => Promise<T>): Promise<T> {
  const old = process.umask(0);
  try {
    return await fn();
  } finally {
    process.umask(old);
  }
}

/** Whether uid/gid 65534 can connect to the unix socket at `p` (its directory opened to others first). */
function nobodyCanConnect(p: string): boolean {
  chmodSync(path.dirname(p), 0o755);
  const r = spawnSync(
    process.execPath,
    [
      "-e",
      `const s = require("node:net").connect(${JSON.stringify(p)});
       s.on("connect", () => { process.stdout.write("connected"); s.destroy(); });
       s.on("error", (e) => { process.stdout.write(e.code); });`,
    ],
    { uid: 65534, gid: 65534, encoding: "utf8", timeout: 10_000 },
  );
  return r.stdout === "connected";
}

/** Regular files below `dir` (not following symlinks, not crossing into mounts' content checks). */
function filesUnder(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    let names: string[];
    try {
      names = readdirSync(d);
    } catch {
      return;
    }
    for (const n of names) {
      const p = path.join(d, n);
      let st: ReturnType<typeof lstatSync>;
      try {
        st = lstatSync(p);
      } catch {
        continue;
      }
      if (st.isDirectory()) walk(p);
      else if (st.isFile()) out.push(p);
    }
  };
  walk(dir);
  return out;
}

/** Where any of SECRETS occurs in `text`, as "<where>: <secret index>" lines. */
function leaks(where: string, text: string | Buffer): string[] {
  const s = typeof text === "string" ? text : text.toString("latin1");
  return SECRETS.flatMap((secret, i) => (s.includes(secret) ? [`${where}: secret #${i}`] : []));
}

describe("reliability: security checks", () => {
  const daemons: Daemon[] = [];
  const dirs: string[] = [];
  const regs: Registry[] = [];
  let fx: RegistryWithBusybox;
  let tried = 0;
  const failed: string[] = [];
  const notes: string[] = [];

  /** One check: counted, and named in the report when it fails. */
  const check = (name: string, fn: () => Promise<void>) =>
    it(name, async () => {
      tried++;
      try {
        await fn();
      } catch (err) {
        failed.push(`${name}: ${(err as Error).message.split("\n")[0]}`);
        throw err;
      }
    });

  before(async () => {
    fx = await registryWithBusybox("test/sec");
  });

  after(async () => {
    for (const d of daemons) {
      killShimsOf(d.address);
      await d.cleanup();
    }
    for (const r of regs) await r.cleanup();
    await fx?.reg.cleanup();
    for (const d of dirs) await removeTempDir(d);
    try {
      execFileSync("rmdir", [`/run/containerd/runc/${NS}`], { stdio: "ignore" });
    } catch {
      // never made, or not empty
    }
    report({
      group: "security",
      cases: tried,
      failures: failed.length,
      checked:
        "socket modes/owners (umask 000), no credential in logs/events/errors/files, TLS verified by default, writes only under root/state, unsafe root/state refused",
      notes: [
        "fixed: berthd started on a root/state owned by another user or writable by others; now refuses, naming the dir (dirs cases)",
        ...notes,
        ...failed,
      ],
    });
  });

  describe("sockets", () => {
    check("gRPC, ttrpc and debug sockets are 0660 with the configured owner under umask 000", async () => {
      const dir = await makeTempDir("sec-sock");
      dirs.push(dir);
      const debugSock = path.join(dir, "debug.sock");
      const d = await underUmask0(() =>
        startBerthd({
          config: [
            "version = 2",
            "[grpc]",
            "  uid = 4321",
            "  gid = 8765",
            "[ttrpc]",
            "  uid = 2345",
            "  gid = 6789",
            "[debug]",
            `  address = ${JSON.stringify(debugSock)}`,
            "  uid = 3456",
            "  gid = 7890",
            "",
          ].join("\n"),
        }),
      );
      daemons.push(d);
      const expect = [
        [d.address, 4321, 8765],
        [`${d.address}.ttrpc`, 2345, 6789],
        [debugSock, 3456, 7890],
      ] as const;
      for (const [p, uid, gid] of expect) {
        const st = statSync(p);
        assert.ok(st.isSocket(), p);
        assert.equal((st.mode & 0o777).toString(8), "660", `mode of ${p}`);
        assert.equal(st.uid, uid, `owner of ${p}`);
        assert.equal(st.gid, gid, `group of ${p}`);
        assert.equal(nobodyCanConnect(p), false, `an unprivileged user reached ${p}`);
      }
      await d.cleanup();
    });

    check("without uid/gid the sockets are root's and 0660 under umask 000", async () => {
      const d = await underUmask0(() => startBerthd({ config: "version = 2\n" }));
      daemons.push(d);
      for (const p of [d.address, `${d.address}.ttrpc`]) {
        const st = statSync(p);
        assert.equal((st.mode & 0o777).toString(8), "660", `mode of ${p}`);
        assert.equal(st.uid, 0, `owner of ${p}`);
        assert.equal(st.gid, 0, `group of ${p}`);
        assert.equal(nobodyCanConnect(p), false, `an unprivileged user reached ${p}`);
      }
      await d.cleanup();
    });
  });

  describe("credentials, TLS and where berthd writes", () => {
    let d: Daemon;
    let tmpdir: string;
    const c = (args: string[]) => ctr(d.address, args, { namespace: NS, timeoutMs: 120_000 });
    const b = (args: string[]) => berth(d.address, args, { namespace: NS, timeoutMs: 120_000 });

    before(async () => {
      tmpdir = await makeTempDir("sec-tmpdir");
      dirs.push(tmpdir);
      // berthd's TMPDIR: anything it writes through the OS temp dir lands here (checked empty)
      d = await startBerthd({
        config: "version = 2\n",
        logLevel: "debug",
        env: { ...process.env, TMPDIR: tmpdir },
      });
      daemons.push(d);
    });

    check(
      "a password never shows in logs, events, error messages, the metadata DB or root/state",
      async () => {
        const authDir = await makeTempDir("sec-htpasswd");
        dirs.push(authDir);
        const htpasswd = path.join(authDir, "htpasswd");
        await writeFile(htpasswd, `${htpasswdLine(USER, PASSWORD)}\n`);
        const areg = await startRegistry({ htpasswd });
        regs.push(areg);
        // `ctr events` for the whole run
        let events = "";
        const ev: ChildProcess = spawn(CTR_BIN, ["--address", d.address, "events"], {
          stdio: ["ignore", "pipe", "pipe"],
        });
        ev.stdout!.on("data", (x: Buffer) => {
          events += x.toString("utf8");
        });
        ev.stderr!.on("data", (x: Buffer) => {
          events += x.toString("utf8");
        });
        const outputs: [string, RunResult][] = [];
        const step = async (name: string, r: Promise<RunResult>) => {
          const res = await r;
          outputs.push([name, res]);
          return res;
        };
        const dst = `${areg.host}/sec/img:1`;
        try {
          await sleep(300); // the subscription is made
          ok(
            await step("pull (open)", b(["images", "pull", "--plain-http", fx.ref1])),
            "pull from the open registry",
          );
          ok(
            await step(
              "push --user",
              b(["images", "push", "--plain-http", "--user", `${USER}:${PASSWORD}`, dst, fx.ref1]),
            ),
            "push --user",
          );
          ok(await step("rm", b(["images", "rm", dst])), "rm");
          ok(
            await step(
              "pull --user",
              b(["images", "pull", "--plain-http", "--user", `${USER}:${PASSWORD}`, dst]),
            ),
            "pull --user",
          );
          ok(await step("rm 2", c(["images", "rm", dst])), "rm 2");
          // ctr's client-side pull: the credentials stay in ctr, content goes through berthd
          ok(
            await step(
              "ctr pull --user",
              c(["images", "pull", "--plain-http", "--user", `${USER}:${PASSWORD}`, dst]),
            ),
            "ctr pull --user",
          );
          ok(await step("rm 3", c(["images", "rm", dst])), "rm 3");
          const bad = await step(
            "pull wrong password",
            b(["images", "pull", "--plain-http", "--user", `${USER}:${WRONG}`, dst]),
          );
          assert.notEqual(bad.code, 0, "a pull with a wrong password succeeded");
          assert.match(bad.stderr, /401|not accepted|unauthorized/i, bad.stderr);
          const push = await step(
            "push wrong password",
            b([
              "images",
              "push",
              "--plain-http",
              "--user",
              `${USER}:${WRONG}`,
              `${areg.host}/sec/other:1`,
              fx.ref1,
            ]),
          );
          assert.notEqual(push.code, 0, "a push with a wrong password succeeded");
          const anon = await step("pull anonymous", b(["images", "pull", "--plain-http", dst]));
          assert.notEqual(anon.code, 0, "an anonymous pull succeeded");
          await sleep(300);
        } finally {
          ev.kill("SIGKILL");
        }
        assert.match(events, /\/(images|content|snapshot)/, `ctr events saw no event: ${events}`);
        const found: string[] = [
          ...leaks("berthd output", d.logs()),
          ...leaks("ctr events", events),
          ...outputs.flatMap(([name, r]) => leaks(`${name} output`, r.stdout + r.stderr)),
        ];
        let scanned = 0;
        for (const f of [...filesUnder(d.root), ...filesUnder(d.state), ...filesUnder(d.dir)]) {
          let data: Buffer;
          try {
            data = readFileSync(f);
          } catch {
            continue;
          }
          scanned++;
          found.push(...leaks(f, data));
        }
        assert.ok(scanned > 5, `only ${scanned} files scanned`);
        assert.ok(
          filesUnder(d.root).some((f) => /meta|\.db/.test(f)),
          "no metadata DB file found under root",
        );
        assert.deepEqual(found, [], `credentials leaked: ${found.join("; ")}`);
      },
    );

    describe("TLS with a CA made by the test", () => {
      let treg: Registry;
      let ca: string;
      let ref: string;
      const hostsDir = async (toml: string) => {
        const h = await makeTempDir("sec-hosts");
        dirs.push(h);
        await mkdir(path.join(h, treg.host), { recursive: true });
        await writeFile(path.join(h, treg.host, "hosts.toml"), toml);
        return h;
      };

      before(async () => {
        const t = await makeTempDir("sec-tls");
        dirs.push(t);
        ca = path.join(t, "ca.pem");
        const o = (args: string[]) =>
          execFileSync("openssl", args, { cwd: t, stdio: ["ignore", "pipe", "pipe"] });
        o(
          ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem"].concat([
            "-days",
            "2",
            "-subj",
            "/CN=berth security test CA",
          ]),
        );
        o([
          "req",
          "-newkey",
          "rsa:2048",
          "-nodes",
          "-keyout",
          "srv.key",
          "-out",
          "srv.csr",
          "-subj",
          "/CN=127.0.0.1",
        ]);
        writeFileSync(path.join(t, "ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n");
        o(
          ["x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"].concat([
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
          ]),
        );
        treg = await startRegistry({
          tls: { certificate: path.join(t, "srv.pem"), key: path.join(t, "srv.key") },
        });
        regs.push(treg);
        ref = `${treg.host}/sec/tls:1`;
        const pushHosts = await hostsDir(`server = "https://${treg.host}"\nskip_verify = true\n`);
        ok(await b(["images", "pull", "--plain-http", fx.ref1]), "pull from the open registry");
        ok(
          await b(["images", "push", "--hosts-dir", pushHosts, ref, fx.ref1]),
          "push over TLS (skip_verify)",
        );
      });

      const pullWith = async (toml: string) => {
        await c(["images", "rm", ref]);
        return b(["images", "pull", "--hosts-dir", await hostsDir(toml), ref]);
      };

      check("refused without `ca` or `skip_verify` (verified by default)", async () => {
        const r = await pullWith(`server = "https://${treg.host}"\n`);
        assert.notEqual(r.code, 0, "a pull from a registry with an untrusted certificate succeeded");
        assert.match(r.stderr, /not trusted|certificate/i, r.stderr);
        const ls = ok(await c(["images", "ls", "-q"]), "images ls");
        assert.doesNotMatch(
          ls,
          new RegExp(ref.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")),
          "image recorded after a refused pull",
        );
      });

      check("accepted with the test CA as `ca` in hosts.toml", async () => {
        ok(await pullWith(`server = "https://${treg.host}"\nca = ${JSON.stringify(ca)}\n`), "pull with ca");
      });

      check("accepted with `skip_verify = true` in hosts.toml", async () => {
        ok(await pullWith(`server = "https://${treg.host}"\nskip_verify = true\n`), "pull with skip_verify");
      });
    });

    check("a pull and a run write nothing outside root/state under /tmp, /var/lib and /run", async () => {
      const markerDir = await makeTempDir("sec-marker");
      dirs.push(markerDir);
      const marker = path.join(markerDir, "marker");
      writeFileSync(marker, "");
      await sleep(20);
      const id = `sec-run-${process.pid}`;
      ok(await b(["images", "pull", "--plain-http", fx.refMulti]), "pull");
      ok(await c(["run", "-d", fx.refMulti, id, "busybox", "sleep", "1000"]), "run -d");
      ok(
        await c([
          "tasks",
          "exec",
          "--exec-id",
          "w1",
          id,
          "busybox",
          "sh",
          "-c",
          "echo hi > /tmp/in-container",
        ]),
        "exec",
      );
      ok(await c(["tasks", "kill", "-s", "SIGKILL", id]), "kill");
      for (let i = 0; i < 100; i++) {
        const ls = ok(await c(["tasks", "ls"]), "tasks ls");
        if (new RegExp(`^${id}\\s+\\d+\\s+STOPPED`, "m").test(ls)) break;
        await sleep(100);
      }
      ok(await c(["tasks", "delete", id]), "tasks delete");
      ok(await c(["containers", "rm", id]), "containers rm");
      // the test's own dirs, the daemons' and registries' temp dirs (root and state are in d.dir)
      const ours = [d.dir, markerDir, tmpdir, fx.reg.dir, ...regs.map((r) => r.dir), ...dirs];
      // runtime v2's fixed layout outside berthd's dirs: shim sockets, runc state, ctr's FIFOs
      const runtimeLayout = ["/run/containerd/s", `/run/containerd/runc/${NS}`, "/run/containerd/fifo"];
      const found = execFileSync(
        "find",
        ["/tmp", "/var/lib", "/run", "-xdev", "-newer", marker, "-not", "-type", "d"],
        { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], maxBuffer: 64 << 20 },
      )
        .split("\n")
        .filter(Boolean)
        .filter((p) => !ours.some((o) => p === o || p.startsWith(`${o}/`)))
        .filter((p) => !runtimeLayout.some((o) => p.startsWith(`${o}/`)));
      // other test runs share this machine's /tmp and /run: keep what names this run (its
      // namespace, container, image repo, daemon) and anything under /var/lib. Writes through the
      // OS temp dir (the only way berthd's code reaches /tmp) are caught by its own TMPDIR below.
      const suspicious = found.filter(
        (p) =>
          p.includes(NS) ||
          p.includes(id) ||
          p.includes("test/sec") ||
          p.includes(String(d.pid)) ||
          p.startsWith("/var/lib/"),
      );
      if (MODE === "full" && found.length > suspicious.length)
        notes.push(`writes check: ${found.length - suspicious.length} unattributed new files (other runs)`);
      assert.deepEqual(suspicious, [], `berthd wrote outside root/state: ${suspicious.join(" ")}`);
      assert.deepEqual(readdirSync(tmpdir), [], "berthd wrote through its TMPDIR");
    });
  });

  describe("root and state directories", () => {
    const refuse = (what: "root" | "state", how: "owner" | "o+w") =>
      check(
        `berthd refuses a ${what} ${how === "owner" ? "owned by another user" : "writable by others"}`,
        async () => {
          const base = await makeTempDir(`sec-${what}`);
          dirs.push(base);
          const root = path.join(base, "root");
          const state = path.join(base, "state");
          await mkdir(root, { mode: 0o711 });
          await mkdir(state, { mode: 0o711 });
          const bad = what === "root" ? root : state;
          if (how === "owner") chownSync(bad, 65534, 65534);
          else chmodSync(bad, 0o777);
          await assert.rejects(
            startBerthd({ config: "version = 2\n", root, state, timeoutMs: 15_000 }),
            (err: Error) => {
              assert.match(err.message, /exited early \(code 1/, err.message);
              const reason = how === "owner" ? "owned by uid 65534" : "writable by others";
              assert.match(
                err.message,
                new RegExp(`${what} directory ${bad} is ${reason}.*refusing to start`),
              );
              return true;
            },
          );
          // nothing was started on it: no socket, no metadata
          assert.deepEqual(readdirSync(root), [], "berthd wrote into a root it refused");
        },
      );
    refuse("root", "owner");
    refuse("state", "owner");
    refuse("root", "o+w");
    refuse("state", "o+w");

    check("berthd starts on its own 0711 root and state (the refusal is not a false alarm)", async () => {
      const d = await startBerthd({ config: "version = 2\n" });
      daemons.push(d);
      assert.ok(d.running());
    });
  });
});
