// berthd: the daemon entry. `berthd [flags]` serves; `berthd config default|dump` prints config.
import { existsSync } from "node:fs";
import { Command } from "commander";
import { createLogger, type Level, parseLevel, stderrSink } from "../../base/log.js";
import {
  type Config,
  ConfigError,
  DEFAULT_CONFIG_PATH,
  defaultConfig,
  loadConfig,
  printConfig,
} from "../../config/config.js";
import { allPlugins, pluginDefaults } from "../../plugins/all.js";
import { startMallocTrim } from "../../sys/malloc.js";
import { sdNotify, startWatchdog } from "../../sys/notify.js";
import { REVISION, VERSION } from "../../version.js";
import { Daemon } from "./daemon.js";

interface Flags {
  config?: string;
  root?: string;
  state?: string;
  address?: string;
  logLevel?: string;
}

function fail(msg: string): never {
  process.stderr.write(`berthd: ${msg}\n`);
  process.exit(1);
}

function load(flags: Flags): {
  config: Config;
  warnings: string[];
  /** What the files say, before the flags: a config reload's baseline. */
  loaded: Config;
  /** Read the files again (a reload); throws ConfigError. */
  reread: () => ReturnType<typeof loadConfig>;
} {
  const plugins = allPlugins();
  const defaults = pluginDefaults(plugins);
  // The default path is optional; an explicitly named file must exist.
  const file = flags.config ?? (existsSync(DEFAULT_CONFIG_PATH) ? DEFAULT_CONFIG_PATH : undefined);
  let res: ReturnType<typeof loadConfig>;
  try {
    res = loadConfig(file, defaults);
  } catch (err) {
    if (err instanceof ConfigError) fail(`failed to load config: ${err.message}`);
    throw err;
  }
  const cfg = res.config;
  const loaded = structuredClone(cfg);
  if (flags.root) cfg.root = flags.root;
  if (flags.state) cfg.state = flags.state;
  if (flags.address) cfg.grpc.address = flags.address;
  if (flags.logLevel) cfg.debug.level = flags.logLevel;
  return { config: cfg, warnings: res.warnings, loaded, reread: () => loadConfig(file, defaults) };
}

const program = new Command("berthd")
  .description("berth: a containerd-compatible container runtime daemon")
  .version(`berthd ${VERSION} ${REVISION}`, "-v, --version")
  .option("-c, --config <file>", `path to the configuration file (default ${DEFAULT_CONFIG_PATH} if present)`)
  .option("--root <dir>", "berthd root directory")
  .option("--state <dir>", "berthd state directory")
  .option("-a, --address <sock>", "address for berthd's gRPC server")
  .option("-l, --log-level <level>", "set the logging level [trace, debug, info, warn, error, fatal, panic]")
  .action(async (flags: Flags) => {
    const { config, warnings, loaded, reread } = load(flags);
    let level: Level;
    try {
      level = parseLevel(config.debug.level || "info");
    } catch (err) {
      fail((err as Error).message);
    }
    const format = config.debug.format || "text";
    if (format !== "text" && format !== "json")
      fail(`debug.format ${JSON.stringify(format)}: want "text" or "json"`);
    const sink = stderrSink(level, format);
    const log = createLogger(sink);
    for (const w of warnings) log.warn(`config: ${w}`);
    log.info("starting berthd", { version: VERSION, revision: REVISION });
    const daemon = new Daemon(config, allPlugins(), log, {
      load: reread,
      loaded,
      sink,
      logLevel: flags.logLevel,
    });
    // SIGHUP reloads the config (the reload logs its outcome); before serving it is ignored.
    process.on("SIGHUP", () => {
      daemon.reload("SIGHUP").catch((err) => log.debug("SIGHUP", { error: (err as Error).message }));
    });
    let stopping = false;
    const shutdown = (sig: string) => {
      if (stopping) return;
      stopping = true;
      log.info("received signal, stopping", { signal: sig });
      safeNotify("STOPPING=1");
      daemon.stop().then(
        () => process.exit(0),
        (err) => {
          log.error("shutdown failed", { error: err });
          process.exit(1);
        },
      );
    };
    process.on("SIGTERM", () => shutdown("terminated"));
    process.on("SIGINT", () => shutdown("interrupt"));
    try {
      await daemon.start();
    } catch (err) {
      log.error("berthd failed to start", { error: err });
      await daemon.stop().catch(() => {});
      fail((err as Error).message);
    }
    safeNotify("READY=1");
    startWatchdog((err) => log.warn("sd_notify WATCHDOG=1 failed", { error: err }));
    startMallocTrim();
    function safeNotify(s: string) {
      try {
        sdNotify(s);
      } catch (err) {
        log.warn("sd_notify failed", { error: err });
      }
    }
  });

const configCmd = program.command("config").description("information on the berthd config");
configCmd
  .command("default")
  .description("print the built-in default configuration")
  .action(() => {
    process.stdout.write(printConfig(defaultConfig(pluginDefaults(allPlugins()))));
  });
configCmd
  .command("dump")
  .description("print the effective configuration (file, imports and flags merged)")
  .action(() => {
    const { config } = load(program.opts<Flags>());
    process.stdout.write(printConfig(config));
  });

// Not a top-level await: the bundle is CommonJS (scripts/bundle.ts), compiled with a code cache.
program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`berthd: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
