// berth: the command line client. Global options and wiring live here; each command group has
// its own file. Commands talk to berthd (or containerd) over gRPC, one connection per run.
import { Command, Option } from "commander";
import { parseDuration } from "../../base/duration.js";
import { registerCompletion } from "./completion.js";
import { registerConfig } from "./config.js";
import { registerContainers } from "./containers.js";
import { registerContent } from "./content.js";
import { DEFAULT_ADDRESS, wire } from "./context.js";
import { registerDoctor } from "./doctor.js";
import { registerEvents } from "./events.js";
import { registerGc } from "./gc.js";
import { registerImageArchive } from "./image-archive.js";
import { registerImageMount } from "./image-mount.js";
import { registerImages } from "./images.js";
import { registerLeases } from "./leases.js";
import { registerNamespaces } from "./namespaces.js";
import { registerPlugins } from "./plugins.js";
import { registerRun } from "./run.js";
import { registerSnapshots } from "./snapshots.js";
import { registerTasks } from "./tasks.js";
import { berthVersion, registerVersion } from "./version.js";

function durationOption(flags: string, description: string): Option {
  return new Option(flags, description).argParser((v: string) => {
    const ms = parseDuration(v);
    if (ms < 0) throw new Error(`negative duration ${JSON.stringify(v)}`);
    return ms;
  });
}

export function buildProgram(): Command {
  const env = process.env;
  const program = new Command("berth")
    .description(
      "A debug and administrative client for berthd (and containerd). It speaks the containerd API; " +
        "its commands and output follow ctr's.",
    )
    .version(
      `berth ${berthVersion().version} ${berthVersion().revision}`,
      "-v, --version",
      "print the version",
    )
    .addOption(new Option("--debug", "enable debug output"))
    .addOption(
      new Option(
        "-a, --address <address>",
        "address of the daemon's gRPC server [$BERTH_ADDRESS, $CONTAINERD_ADDRESS]",
      ).default(env.BERTH_ADDRESS || env.CONTAINERD_ADDRESS || DEFAULT_ADDRESS),
    )
    .addOption(durationOption("--timeout <duration>", "timeout for connecting and for each call, e.g. 10s"))
    .addOption(durationOption("--connect-timeout <duration>", "timeout for connecting (default 10s)"))
    .addOption(
      new Option(
        "-n, --namespace <namespace>",
        "namespace to use with commands [$BERTH_NAMESPACE, $CONTAINERD_NAMESPACE]",
      ).default(env.BERTH_NAMESPACE || env.CONTAINERD_NAMESPACE || "default"),
    )
    .showHelpAfterError()
    .showSuggestionAfterError();

  registerPlugins(program, wire);
  registerVersion(program, wire);
  registerContent(program, wire);
  registerEvents(program, wire);
  registerLeases(program, wire);
  registerNamespaces(program, wire);
  registerSnapshots(program, wire);
  registerGc(program, wire);
  registerConfig(program, wire);
  const images = registerImages(program, wire);
  registerImageArchive(images, wire);
  registerImageMount(images, wire);
  registerContainers(program, wire);
  registerTasks(program, wire);
  registerRun(program, wire);
  registerDoctor(program);
  registerCompletion(program);
  return program;
}

async function main(): Promise<void> {
  // A closed pipe downstream (`berth content get ... | head -c1`) is not an error.
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") process.exit(process.exitCode ?? 0);
    throw err;
  });
  const debug = process.argv.includes("--debug");
  try {
    await buildProgram().parseAsync(process.argv);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    process.stderr.write(`berth: ${msg}\n`);
    if (debug && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    process.exitCode = 1;
  }
}

// not a top-level await: the CLI is bundled as CommonJS (scripts/bundle.ts), which has none
void main();
