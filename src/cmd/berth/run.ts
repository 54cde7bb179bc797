// `berth run`: make a container from an image (see container-create.ts: the spec from the flags
// as OCI spec options, the rootfs snapshot from the image's chain ID), create its task with FIFOs
// for standard I/O, start it, wait and exit with its status.
import { writeFileSync } from "node:fs";
import type { Command } from "commander";
import { logURIIO, NULL_IO, removeFifoDir } from "../../core/cio/index.js";
import { Containers } from "../../gen/containerd/services/containers/v1/containers_pb.js";
import { Snapshots } from "../../gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { Tasks } from "../../gen/containerd/services/tasks/v1/tasks_pb.js";
import { consoleResizer, rawConsole } from "./console.js";
import { createContainer } from "./container-create.js";
import { addContainerFlags, readContainerFlags } from "./container-flags.js";
import type { CliContext, Wire } from "./context.js";
import { forwardSignals } from "./signals.js";
import { newFifoIO } from "./task-io.js";

async function run(ctx: CliContext, ref: string, id: string, args: string[], o: Record<string, unknown>) {
  const f = readContainerFlags(o);
  const detach = o.detach === true;
  const rm = o.rm === true;
  if (detach && rm) throw new Error("flags --detach and --rm cannot be specified together");
  if (f.tty && o.nullIo) throw new Error("tty and null-io cannot be used together");
  const { snapshotter } = await createContainer(ctx, ref, id, args, f);
  const tasks = await ctx.client(Tasks);
  const cleanup = async () => {
    if (!rm) return;
    await tasks.delete({ containerId: id }, ctx.call()).catch(() => {});
    const containers = await ctx.client(Containers);
    await containers.delete({ id }, ctx.call()).catch((err: unknown) => ctx.fail(String(err)));
    const snaps = await ctx.client(Snapshots);
    await snaps.remove({ snapshotter, key: id }, ctx.call()).catch(() => {});
  };
  // ctr puts the console in raw mode before it creates the task, and back when it returns
  const con = f.tty ? rawConsole() : undefined;
  let exitStatus = 0;
  try {
    // as ctr: a terminal wins over a log URI (the shim then writes stdout and stderr itself)
    const io = o.nullIo
      ? NULL_IO
      : o.logUri && !f.tty
        ? logURIIO(o.logUri as string)
        : newFifoIO(id, f.tty === true, undefined, {
            fifoDir: o.fifoDir as string | undefined,
            keep: detach,
          });
    try {
      const snaps = await ctx.client(Snapshots);
      const { mounts } = await snaps.mounts({ snapshotter, key: id }, ctx.call());
      const { pid } = await tasks.create(
        {
          containerId: id,
          rootfs: mounts,
          stdin: io.stdin,
          stdout: io.stdout,
          stderr: io.stderr,
          terminal: io.terminal,
        },
        ctx.call(),
      );
      if (o.pidFile) writeFileSync(o.pidFile as string, String(pid));
    } catch (err) {
      io.close();
      removeFifoDir(io);
      await cleanup();
      throw err;
    }
    try {
      if (detach) {
        await tasks.start({ containerId: id }, ctx.call());
        return;
      }
      // Without a terminal, the end of our stdin closes the task's; with one, the pty stays open
      // (closing it would hang up the process), as with ctr.
      io.startInput(
        io.terminal
          ? undefined
          : () => {
              tasks.closeIO({ containerId: id, stdin: true }, ctx.call()).catch(() => {});
            },
      );
      const waiting = tasks.wait({ containerId: id }, ctx.stream());
      waiting.catch(() => {});
      const resizer = consoleResizer(io.terminal ? con : undefined, (width, height) =>
        tasks.resizePty({ containerId: id, width, height }, ctx.call()),
      );
      const undoSig = io.terminal
        ? () => {}
        : forwardSignals((signal) => tasks.kill({ containerId: id, signal }, ctx.call()));
      try {
        await resizer.before();
        await tasks.start({ containerId: id }, ctx.call());
        await resizer.after();
        exitStatus = (await waiting).exitStatus;
        await io.drained();
      } finally {
        undoSig();
        resizer.undo();
      }
    } finally {
      io.close();
      if (!detach) await cleanup();
    }
  } finally {
    con?.reset();
  }
  if (exitStatus !== 0) process.exitCode = exitStatus;
}

export function registerRun(program: Command, wire: Wire): void {
  addContainerFlags(
    program
      .command("run")
      .description("run a container")
      .argument("<image>", "image reference")
      .argument("<id>", "container id")
      .argument("[command...]", "command and arguments (default: the image's)")
      .option("--rm", "remove the container after running")
      .option("-d, --detach", "detach from the task after it has started")
      .option("--null-io", "send all I/O to /dev/null")
      .option("--log-uri <uri>", "stdout and stderr to file:///path or binary:///path?arg=value")
      .option("--fifo-dir <dir>", "directory for the I/O FIFOs")
      .option("--pid-file <file>", "file to write the task's pid to"),
  )
    // The container's command may carry its own options (sh -c ...): unknown ones stay arguments.
    .allowUnknownOption()
    .action(
      wire(async (ctx, cmd) => {
        const [ref, id, args] = cmd.processedArgs as [string, string, string[]];
        await run(ctx, ref, id, args ?? [], cmd.opts());
      }),
    );
}
