// `berth tasks` (alias task, t): start, list, attach, kill, exec, pause, resume, ps, metrics and
// delete tasks. Output follows ctr's.
import { writeFileSync } from "node:fs";
import type { Command } from "commander";
import { isNotFound } from "../../base/errdefs.js";
import { logURIIO, NULL_IO, removeFifoDir, type TaskIO } from "../../core/cio/index.js";
import { PROCESS_TYPE_URL, resolveUser, type Spec } from "../../core/oci/index.js";
import { Containers } from "../../gen/containerd/services/containers/v1/containers_pb.js";
import { Snapshots } from "../../gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { Tasks } from "../../gen/containerd/services/tasks/v1/tasks_pb.js";
import { Status } from "../../gen/containerd/types/task/task_pb.js";
import { type Console, consoleResizer, rawConsole } from "./console.js";
import type { CliContext, Wire } from "./context.js";
import { forwardSignals, parseSignal } from "./signals.js";
import { goTimeString, printJson, SPACES, TabWriter, WIDE } from "./table.js";
import { fifoIO, newFifoIO } from "./task-io.js";

const aliases = (cmd: Command, ...names: string[]) => {
  for (const n of names) cmd.alias(n);
  return cmd;
};

const statusName = (s: Status) => (Status[s] ?? "UNKNOWN").toString();

async function containerSpecOf(
  ctx: CliContext,
  id: string,
): Promise<{ spec: Spec; snapshotter: string; key: string }> {
  const containers = await ctx.client(Containers);
  const { container } = await containers.get({ id }, ctx.call());
  if (!container?.spec) throw new Error(`container "${id}" has no spec`);
  return {
    spec: JSON.parse(Buffer.from(container.spec.value).toString("utf8")) as Spec,
    snapshotter: container.snapshotter,
    key: container.snapshotKey,
  };
}

/**
 * Waits for a process: pipes I/O, keeps a terminal's size in step (also sized before `start`)
 * or forwards our signals, and returns the exit status. Our stdin ending closes the process's
 * stdin only for `closeStdin` without a terminal (closing a pty's input hangs the process up).
 */
async function attachAndWait(
  ctx: CliContext,
  id: string,
  execId: string,
  io: TaskIO,
  opts: { con?: Console; start?: () => Promise<unknown>; closeStdin?: boolean } = {},
): Promise<number> {
  const tasks = await ctx.client(Tasks);
  const waiting = tasks.wait({ containerId: id, execId }, ctx.stream());
  waiting.catch(() => {});
  io.startInput(
    opts.closeStdin && !io.terminal
      ? () => {
          tasks.closeIO({ containerId: id, execId, stdin: true }, ctx.call()).catch(() => {});
        }
      : undefined,
  );
  const resizer = consoleResizer(io.terminal ? opts.con : undefined, (width, height) =>
    tasks.resizePty({ containerId: id, execId, width, height }, ctx.call()),
  );
  const undoSig = io.terminal
    ? () => {}
    : forwardSignals((signal) => tasks.kill({ containerId: id, execId, signal }, ctx.call()));
  try {
    if (opts.start) {
      await resizer.before();
      await opts.start();
    }
    await resizer.after();
    const r = await waiting;
    await io.drained();
    return r.exitStatus;
  } finally {
    undoSig();
    resizer.undo();
    io.close();
  }
}

/** Minimal protobuf walk: field number → raw values (varints as bigint, length-delimited as bytes). */
function pbFields(buf: Uint8Array): Map<number, (bigint | Uint8Array)[]> {
  const out = new Map<number, (bigint | Uint8Array)[]>();
  let i = 0;
  const varint = (): bigint => {
    let r = 0n;
    let shift = 0n;
    for (;;) {
      const b = buf[i++]!;
      r |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return r;
      shift += 7n;
    }
  };
  while (i < buf.length) {
    const key = Number(varint());
    const field = key >> 3;
    const wire = key & 7;
    let v: bigint | Uint8Array;
    if (wire === 0) v = varint();
    else if (wire === 2) {
      const n = Number(varint());
      v = buf.subarray(i, i + n);
      i += n;
    } else if (wire === 1) {
      v = Buffer.from(buf.subarray(i, i + 8)).readBigUInt64LE();
      i += 8;
    } else if (wire === 5) {
      v = BigInt(Buffer.from(buf.subarray(i, i + 4)).readUInt32LE());
      i += 4;
    } else break;
    const list = out.get(field) ?? [];
    list.push(v);
    out.set(field, list);
  }
  return out;
}

const sub = (m: Map<number, (bigint | Uint8Array)[]>, f: number) => {
  const v = m.get(f)?.[0];
  return pbFields(v instanceof Uint8Array ? v : new Uint8Array());
};
const num = (m: Map<number, (bigint | Uint8Array)[]>, f: number) => {
  const v = m.get(f)?.[0];
  return typeof v === "bigint" ? v : 0n;
};

/** METRIC/VALUE rows for cgroups v1 or v2 metrics. */
function metricRows(typeUrl: string, value: Uint8Array): [string, string][] {
  const m = pbFields(value);
  if (typeUrl.includes("cgroups.v1")) {
    const mem = sub(m, 4);
    const usage = sub(mem, 33);
    const cpu = sub(sub(m, 3), 1);
    const pids = sub(m, 2);
    const perCpu: bigint[] = [];
    for (const v of cpu.get(4) ?? []) {
      if (typeof v === "bigint") perCpu.push(v);
      else {
        let j = 0;
        while (j < v.length) {
          let r = 0n;
          let s = 0n;
          for (;;) {
            const b = v[j++]!;
            r |= BigInt(b & 0x7f) << s;
            if ((b & 0x80) === 0) break;
            s += 7n;
          }
          perCpu.push(r);
        }
      }
    }
    return [
      ["memory.usage_in_bytes", String(num(usage, 2))],
      ["memory.limit_in_bytes", String(num(usage, 1))],
      ["memory.stat.cache", String(num(mem, 18))],
      ["cpuacct.usage", String(num(cpu, 1))],
      ["cpuacct.usage_percpu", `[${perCpu.join(" ")}]`],
      ["pids.current", String(num(pids, 1))],
      ["pids.limit", String(num(pids, 2))],
    ];
  }
  const pids = sub(m, 1);
  const cpu = sub(m, 2);
  const mem = sub(m, 4);
  return [
    ["pids.current", String(num(pids, 1))],
    ["pids.limit", String(num(pids, 2))],
    ["cpu.usage_usec", String(num(cpu, 1))],
    ["cpu.user_usec", String(num(cpu, 2))],
    ["cpu.system_usec", String(num(cpu, 3))],
    ["memory.usage", String(num(mem, 32))],
    ["memory.usage_limit", String(num(mem, 33))],
    ["memory.swap_usage", String(num(mem, 34))],
  ];
}

async function killAndWait(ctx: CliContext, id: string, execId = ""): Promise<void> {
  const tasks = await ctx.client(Tasks);
  const waiting = tasks.wait({ containerId: id, execId }, ctx.stream());
  waiting.catch(() => {});
  await tasks
    .kill({ containerId: id, execId, signal: 9, all: execId === "" }, ctx.call())
    .catch((err: unknown) => {
      if (!isNotFound(err) && !/not running|process already finished/i.test(String(err))) throw err;
    });
  await waiting.catch(() => {});
}

export function registerTasks(program: Command, wire: Wire): void {
  const tasks = aliases(program.command("tasks").description("manage tasks"), "task", "t");

  tasks
    .command("start")
    .description("start a container that has been created")
    .argument("<id>", "container id")
    .option("--null-io", "send all I/O to /dev/null")
    .option("--log-uri <uri>", "stdout and stderr to file:///path or binary:///path?arg=value")
    .option("--fifo-dir <dir>", "directory for the FIFOs")
    .option("--pid-file <file>", "file to write the process id to")
    .option("-d, --detach", "detach from the task after it has started")
    .action(
      wire(async (ctx, cmd) => {
        const [id] = cmd.processedArgs as [string];
        const o = cmd.opts();
        const { spec, snapshotter, key } = await containerSpecOf(ctx, id);
        const client = await ctx.client(Tasks);
        const snaps = await ctx.client(Snapshots);
        const rootfs = key ? (await snaps.mounts({ snapshotter, key }, ctx.call())).mounts : [];
        const tty = spec.process?.terminal === true;
        if (tty && o.nullIo) throw new Error("tty and null-io cannot be used together");
        const con = tty && !o.detach ? rawConsole() : undefined;
        try {
          const io = o.nullIo
            ? NULL_IO
            : o.logUri && !tty
              ? logURIIO(o.logUri as string)
              : newFifoIO(id, tty, undefined, {
                  fifoDir: o.fifoDir as string | undefined,
                  keep: o.detach === true,
                });
          let pid: number;
          try {
            ({ pid } = await client.create(
              {
                containerId: id,
                rootfs,
                stdin: io.stdin,
                stdout: io.stdout,
                stderr: io.stderr,
                terminal: io.terminal,
              },
              ctx.call(),
            ));
          } catch (err) {
            io.close();
            removeFifoDir(io);
            throw err;
          }
          if (o.pidFile) writeFileSync(o.pidFile as string, String(pid));
          if (o.detach) {
            try {
              await client.start({ containerId: id }, ctx.call());
            } finally {
              io.close();
            }
            return;
          }
          const code = await attachAndWait(ctx, id, "", io, {
            con,
            closeStdin: true,
            start: () => client.start({ containerId: id }, ctx.call()),
          });
          await client.delete({ containerId: id }, ctx.call()).catch(() => {});
          if (code !== 0) process.exitCode = code;
        } finally {
          con?.reset();
        }
      }),
    );

  aliases(tasks.command("list"), "ls")
    .description("list tasks")
    .option("-q, --quiet", "print only the task id")
    .action(
      wire(async (ctx, cmd) => {
        const client = await ctx.client(Tasks);
        const { tasks: list } = await client.list({}, ctx.call());
        if (cmd.opts().quiet) {
          for (const t of list) process.stdout.write(`${t.id}\n`);
          return;
        }
        const tw = new TabWriter(WIDE);
        tw.row("TASK", "PID", "STATUS", "");
        for (const t of list) tw.row(t.id, String(t.pid), statusName(t.status));
        tw.flush();
      }),
    );

  tasks
    .command("attach")
    .description("attach to the IO of a running container")
    .argument("<id>", "container id")
    .action(
      wire(async (ctx, cmd) => {
        const [id] = cmd.processedArgs as [string];
        const { spec } = await containerSpecOf(ctx, id);
        const tty = spec.process?.terminal === true;
        const client = await ctx.client(Tasks);
        const { process: p } = await client.get({ containerId: id }, ctx.call());
        if (!p) throw new Error(`task "${id}": not found`);
        // ctr reopens the task's own FIFOs (the ones it was created with) and, once the task
        // exits, deletes it; our stdin ending only stops copying (the task's stdin stays open).
        const con = tty ? rawConsole() : undefined;
        try {
          const io =
            p.stdin || p.stdout || p.stderr
              ? fifoIO({ stdin: p.stdin, stdout: p.stdout, stderr: p.stderr }, tty)
              : { ...NULL_IO, terminal: tty };
          const code = await attachAndWait(ctx, id, "", io, { con });
          await client.delete({ containerId: id }, ctx.call()).catch(() => {});
          removeFifoDir(p);
          if (code !== 0) process.exitCode = code;
        } finally {
          con?.reset();
        }
      }),
    );

  tasks
    .command("kill")
    .description("signal a container (default: SIGTERM)")
    .argument("<id>", "container id")
    .option("-s, --signal <signal>", "signal to send to the container", "SIGTERM")
    .option("--exec-id <id>", "process ID to kill")
    .option("-a, --all", "send signal to all processes inside the container")
    .action(
      wire(async (ctx, cmd) => {
        const [id] = cmd.processedArgs as [string];
        const o = cmd.opts();
        if (o.all && o.execId) throw new Error("specify an exec-id or all; not both");
        const client = await ctx.client(Tasks);
        await client.kill(
          {
            containerId: id,
            execId: o.execId ?? "",
            signal: parseSignal(o.signal as string),
            all: o.all === true,
          },
          ctx.call(),
        );
      }),
    );

  tasks
    .command("exec")
    .description("execute additional processes in an existing container")
    .argument("<id>", "container id")
    .argument("<command...>", "command and arguments")
    .requiredOption("--exec-id <id>", "exec specific id for the process")
    .option("--cwd <dir>", "working directory of the new process")
    .option("-t, --tty", "allocate a TTY for the container")
    .option("-d, --detach", "detach from the task after it has started execution")
    .option("--fifo-dir <dir>", "directory for the FIFOs")
    .option("--user <user>", "user id or name (group optional: <name|uid>[:<group|gid>])")
    .allowUnknownOption()
    .action(
      wire(async (ctx, cmd) => {
        const [id, args] = cmd.processedArgs as [string, string[]];
        const o = cmd.opts();
        const execId = o.execId as string;
        const tty = o.tty === true;
        const { spec } = await containerSpecOf(ctx, id);
        const client = await ctx.client(Tasks);
        const p = { ...spec.process, args, terminal: tty };
        if (o.cwd) p.cwd = o.cwd as string;
        if (o.user) {
          // names resolve in the container's own root: the running task's, seen through /proc
          const { process: init } = await client.get({ containerId: id }, ctx.call());
          if (!init?.pid) throw new Error(`task "${id}" has no running process`);
          p.user = resolveUser(o.user as string, `/proc/${init.pid}/root`);
        }
        const con = tty && !o.detach ? rawConsole() : undefined;
        try {
          const io = newFifoIO(id, tty, execId, {
            fifoDir: o.fifoDir as string | undefined,
            keep: o.detach === true,
          });
          try {
            await client.exec(
              {
                containerId: id,
                execId,
                stdin: io.stdin,
                stdout: io.stdout,
                stderr: io.stderr,
                terminal: io.terminal,
                spec: { typeUrl: PROCESS_TYPE_URL, value: Buffer.from(JSON.stringify(p)) },
              },
              ctx.call(),
            );
          } catch (err) {
            io.close();
            removeFifoDir(io);
            throw err;
          }
          if (o.detach) {
            try {
              await client.start({ containerId: id, execId }, ctx.call());
            } finally {
              io.close();
            }
            return;
          }
          const code = await attachAndWait(ctx, id, execId, io, {
            con,
            closeStdin: true,
            start: () => client.start({ containerId: id, execId }, ctx.call()),
          });
          await client.deleteProcess({ containerId: id, execId }, ctx.call()).catch(() => {});
          if (code !== 0) process.exitCode = code;
        } finally {
          con?.reset();
        }
      }),
    );

  tasks
    .command("pause")
    .description("pause an existing container")
    .argument("<id>", "container id")
    .action(
      wire(async (ctx, cmd) => {
        const [id] = cmd.processedArgs as [string];
        await (await ctx.client(Tasks)).pause({ containerId: id }, ctx.call());
      }),
    );

  tasks
    .command("resume")
    .description("resume a paused container")
    .argument("<id>", "container id")
    .action(
      wire(async (ctx, cmd) => {
        const [id] = cmd.processedArgs as [string];
        await (await ctx.client(Tasks)).resume({ containerId: id }, ctx.call());
      }),
    );

  tasks
    .command("ps")
    .description("list processes for container")
    .argument("<id>", "container id")
    .action(
      wire(async (ctx, cmd) => {
        const [id] = cmd.processedArgs as [string];
        const { processes } = await (await ctx.client(Tasks)).listPids({ containerId: id }, ctx.call());
        const tw = new TabWriter({ ...SPACES, padding: 4 });
        tw.row("PID", "INFO");
        for (const p of processes) {
          let info = "-";
          if (p.info && p.info.value.length > 0) {
            const f = pbFields(p.info.value).get(1)?.[0];
            info = `&ProcessDetails{ExecID:${f instanceof Uint8Array ? Buffer.from(f).toString("utf8") : ""},}`;
          }
          tw.row(String(p.pid), info);
        }
        tw.flush();
      }),
    );

  aliases(tasks.command("metrics"), "metric")
    .description("get a single data point of metrics for a task with the built-in Linux runtime")
    .argument("<id>", "container id")
    .option("--format <format>", '"table" or "json"', "table")
    .action(
      wire(async (ctx, cmd) => {
        const [id] = cmd.processedArgs as [string];
        const { metrics } = await (await ctx.client(Tasks)).metrics({ filters: [`id==${id}`] }, ctx.call());
        const m = metrics[0];
        if (!m) throw new Error(`no metrics received for ${id}`);
        const rows = m.data ? metricRows(m.data.typeUrl, m.data.value) : [];
        if (cmd.opts().format === "json") {
          printJson(Object.fromEntries(rows.map(([k, v]) => [k, Number(v)])));
          return;
        }
        const tw = new TabWriter({ ...SPACES, padding: 4 });
        // ctr prints the Go time.Time's String() form
        const ts = goTimeString(m.timestamp);
        tw.write(`ID\tTIMESTAMP\t\n${m.id}\t${ts}\t\n\n`);
        tw.write("METRIC\tVALUE\t\n");
        for (const [k, v] of rows) tw.write(`${k}\t${v}\t\n`);
        tw.flush();
      }),
    );

  aliases(tasks.command("delete"), "del", "remove", "rm")
    .description("delete one or more tasks")
    .argument("<ids...>", "container ids")
    .option("-f, --force", "force delete task process")
    .option("--exec-id <id>", "process ID to kill")
    .action(
      wire(async (ctx, cmd) => {
        const [ids] = cmd.processedArgs as [string[]];
        const o = cmd.opts();
        const client = await ctx.client(Tasks);
        for (const id of ids) {
          try {
            // the process's FIFOs, to remove once it is gone when berth made them
            const execId = (o.execId as string | undefined) ?? "";
            const p = await client
              .get({ containerId: id, execId }, ctx.call())
              .then((r) => r.process)
              .catch(() => undefined);
            if (execId) {
              if (o.force) await killAndWait(ctx, id, execId);
              await client.deleteProcess({ containerId: id, execId }, ctx.call());
              if (p) removeFifoDir(p);
              continue;
            }
            if (o.force && p && p.status !== Status.STOPPED) await killAndWait(ctx, id);
            await client.delete({ containerId: id }, ctx.call());
            if (p) removeFifoDir(p);
          } catch (err) {
            if (ids.length === 1) throw err;
            ctx.fail(`failed to delete task "${id}": ${(err as Error).message}`);
          }
        }
      }),
    );
}
