// The Tasks gRPC service (containerd.services.tasks.v1.Tasks): a thin adapter over the in-process
// Task API (src/core/runtime) and the container store, with containerd 1.6's checks and messages.
// Process state, exits and stats come from the shims; task events are published by the shims.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { EmptySchema, type Timestamp, type TimestampSchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { BerthError, errInvalidArgument, errorf, isNotFound } from "../base/errdefs.js";
import type { Logger } from "../base/log.js";
import type { ContainerStore } from "../core/containers/store.js";
import { parseFilters } from "../core/filters.js";
import type { ProcessState, Task, TaskManager } from "../core/runtime/manager.js";
import { statusNumber } from "../core/runtime/process.js";
import type { Tasks } from "../gen/containerd/services/tasks/v1/tasks_pb.js";
import type { ServiceImpl } from "../grpc/service.js";

const STATE_TIMEOUT_MS = 2000;

const taskNotFound = (id: string) => errorf("not found", `task ${id} not found`);

/** Nanoseconds since the epoch as a Timestamp, exactly (what the shim sent). */
function timestampOfNs(ns: bigint | undefined): MessageInitShape<typeof TimestampSchema> | undefined {
  if (ns === undefined) return undefined;
  let seconds = ns / 1_000_000_000n;
  if (ns < 0n && seconds * 1_000_000_000n !== ns) seconds -= 1n;
  return { seconds, nanos: Number(ns - seconds * 1_000_000_000n) };
}

function processFromState(s: ProcessState) {
  return {
    id: s.id,
    pid: s.pid,
    status: statusNumber(s.status),
    stdin: s.stdin,
    stdout: s.stdout,
    stderr: s.stderr,
    terminal: s.terminal,
    exitStatus: s.exitStatus,
    exitedAt: timestampOfNs(s.exitedAtNs),
  };
}

const zeroTime = (): Timestamp => timestampFromDate(new Date(Date.UTC(1, 0, 1)));

export function tasksService(
  containers: ContainerStore,
  tasks: TaskManager,
  log: Logger,
): ServiceImpl<typeof Tasks> {
  const getTask = (ns: string, containerId: string): Task => {
    const c = containers.get(ns, containerId);
    try {
      return tasks.get(ns, c.id);
    } catch {
      throw taskNotFound(c.id);
    }
  };
  const processInfo = async (task: Task, execId: string) => {
    try {
      return processFromState(await task.process(execId).state({ timeoutMs: STATE_TIMEOUT_MS }));
    } catch (err) {
      if (isNotFound(err)) throw err;
      log.warn("get state failed", { id: execId || task.id, error: (err as Error).message });
      return { id: execId || task.id };
    }
  };
  const empty = () => create(EmptySchema);

  return {
    async create(req, ctx) {
      const ns = ctx.namespace();
      const c = containers.get(ns, req.containerId);
      if (req.checkpoint) throw errInvalidArgument("checkpoint restore is not supported by berth (no CRIU)");
      if (tasks.has(ns, c.id)) throw new BerthError("already exists", `task ${c.id}`);
      const task = await tasks.create(ns, c.id, {
        spec: c.spec,
        runtime: req.runtimePath || c.runtime.name,
        runtimeOptions: c.runtime.options,
        taskOptions: req.options && { typeUrl: req.options.typeUrl, value: req.options.value },
        rootfs: req.rootfs,
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
        terminal: req.terminal,
      });
      return { containerId: c.id, pid: task.pid };
    },
    async start(req, ctx) {
      const task = getTask(ctx.namespace(), req.containerId);
      return { pid: await task.process(req.execId).start() };
    },
    async delete(req, ctx) {
      const ns = ctx.namespace();
      const c = containers.get(ns, req.containerId);
      if (!tasks.has(ns, c.id)) throw taskNotFound(c.id);
      const exit = await tasks.delete(ns, c.id);
      return {
        pid: exit.pid,
        exitStatus: exit.exitStatus,
        exitedAt: timestampOfNs(exit.exitedAtNs) ?? zeroTime(),
      };
    },
    async deleteProcess(req, ctx) {
      const task = getTask(ctx.namespace(), req.containerId);
      // the shim-level delete, also for exec id "" (as containerd does), not the whole task's
      const exit = await task.process(req.execId).delete();
      return {
        id: req.execId,
        pid: exit.pid,
        exitStatus: exit.exitStatus,
        exitedAt: timestampOfNs(exit.exitedAtNs),
      };
    },
    async get(req, ctx) {
      const task = getTask(ctx.namespace(), req.containerId);
      return { process: await processInfo(task, req.execId) };
    },
    async list(_req, ctx) {
      const ns = ctx.namespace();
      const out = [];
      for (const task of tasks.list(ns)) {
        try {
          out.push(await processInfo(task, ""));
        } catch (err) {
          if (!isNotFound(err)) throw err;
        }
      }
      return { tasks: out };
    },
    async kill(req, ctx) {
      const task = getTask(ctx.namespace(), req.containerId);
      await task.process(req.execId).kill(req.signal, { all: req.all });
      return empty();
    },
    async exec(req, ctx) {
      if (!req.execId) throw errorf("invalid argument", "exec id cannot be empty");
      const task = getTask(ctx.namespace(), req.containerId);
      await task.exec(req.execId, {
        terminal: req.terminal,
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
        spec: req.spec && { typeUrl: req.spec.typeUrl, value: req.spec.value },
      });
      return empty();
    },
    async resizePty(req, ctx) {
      const task = getTask(ctx.namespace(), req.containerId);
      await task.process(req.execId).resize(req.width, req.height);
      return empty();
    },
    async closeIO(req, ctx) {
      const task = getTask(ctx.namespace(), req.containerId);
      await task.process(req.execId).closeIO({ stdin: req.stdin });
      return empty();
    },
    async pause(req, ctx) {
      await getTask(ctx.namespace(), req.containerId).pause();
      return empty();
    },
    async resume(req, ctx) {
      await getTask(ctx.namespace(), req.containerId).resume();
      return empty();
    },
    async listPids(req, ctx) {
      const task = getTask(ctx.namespace(), req.containerId);
      return { processes: await task.pids() };
    },
    checkpoint() {
      throw errorf("not implemented", "checkpoint is not supported by berth: no CRIU on this host");
    },
    async update(req, ctx) {
      const task = getTask(ctx.namespace(), req.containerId);
      await task.update({
        resources: req.resources && { typeUrl: req.resources.typeUrl, value: req.resources.value },
        annotations: req.annotations,
      });
      return empty();
    },
    async metrics(req, ctx) {
      const ns = ctx.namespace();
      const filter = parseFilters(req.filters);
      const metrics = [];
      for (const task of tasks.list(ns)) {
        const match = filter.match((fp) => {
          switch (fp[0]) {
            case "id":
              return task.id;
            case "namespace":
              return task.namespace;
            case "runtime":
              return task.runtime;
            default:
              return undefined;
          }
        });
        if (!match) continue;
        try {
          const data = await task.metrics();
          metrics.push({ timestamp: timestampFromDate(new Date()), id: task.id, data });
        } catch (err) {
          if (isNotFound(err)) continue;
          log.error("collecting metrics", { id: task.id, error: (err as Error).message });
        }
      }
      return { metrics };
    },
    async wait(req, ctx) {
      const task = getTask(ctx.namespace(), req.containerId);
      const exit = await task.process(req.execId).wait({ signal: ctx.signal });
      return { exitStatus: exit.exitStatus, exitedAt: timestampOfNs(exit.exitedAtNs) };
    },
  };
}
