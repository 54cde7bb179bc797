// The Tasks gRPC service (containerd.services.tasks.v1.Tasks): a thin adapter over the runtime v2
// task manager and the container store, with containerd 1.6's checks and messages. Process state,
// exits and stats come from the shim; task events are published by the shim itself.
import { create } from "@bufbuild/protobuf";
import { EmptySchema, type Timestamp, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { BerthError, errInvalidArgument, isNotFound } from "../base/errdefs.js";
import type { Logger } from "../base/log.js";
import type { ContainerStore } from "../core/containers/store.js";
import { parseFilters } from "../core/filters.js";
import type { TaskManager } from "../core/runtime/manager.js";
import type { Shim } from "../core/runtime/shim.js";
import type { StateResponse } from "../gen/containerd/runtime/v2/task/shim_pb.js";
import type { Tasks } from "../gen/containerd/services/tasks/v1/tasks_pb.js";
import type { ServiceImpl } from "../grpc/service.js";

const STATE_TIMEOUT_MS = 2000;

function withMessage(kind: BerthError["kind"], message: string): BerthError {
  const err = new BerthError(kind);
  err.message = message;
  return err;
}

const taskNotFound = (id: string) => withMessage("not found", `task ${id} not found`);

function processFromState(id: string, s: StateResponse) {
  return {
    id,
    pid: s.pid,
    status: s.status,
    stdin: s.stdin,
    stdout: s.stdout,
    stderr: s.stderr,
    terminal: s.terminal,
    exitStatus: s.exitStatus,
    exitedAt: s.exitedAt,
  };
}

const zeroTime = (): Timestamp => timestampFromDate(new Date(Date.UTC(1, 0, 1)));

export function tasksService(
  containers: ContainerStore,
  tasks: TaskManager,
  log: Logger,
): ServiceImpl<typeof Tasks> {
  const getTask = (ns: string, containerId: string): Shim => {
    const c = containers.get(ns, containerId);
    try {
      return tasks.get(ns, c.id);
    } catch {
      throw taskNotFound(c.id);
    }
  };
  const state = async (shim: Shim, execId: string) => {
    try {
      return await shim.task.state(
        { id: shim.id, execId },
        { namespace: shim.namespace, timeoutMs: STATE_TIMEOUT_MS },
      );
    } catch (err) {
      if (isNotFound(err)) throw err;
      log.warn("get state failed", { id: execId || shim.id, error: (err as Error).message });
      return undefined;
    }
  };
  const processInfo = async (shim: Shim, execId: string) => {
    const s = await state(shim, execId);
    const id = execId || shim.id;
    return s ? processFromState(id, s) : { id };
  };
  const empty = () => create(EmptySchema);

  return {
    async create(req, ctx) {
      const ns = ctx.namespace();
      const c = containers.get(ns, req.containerId);
      if (req.checkpoint) throw errInvalidArgument("checkpoint restore is not supported by berth (no CRIU)");
      if (tasks.has(ns, c.id)) throw new BerthError("already exists", `task ${c.id}`);
      const { pid } = await tasks.create(ns, c.id, {
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
      return { containerId: c.id, pid };
    },
    async start(req, ctx) {
      const shim = getTask(ctx.namespace(), req.containerId);
      const r = await shim.task.start({ id: shim.id, execId: req.execId }, { namespace: shim.namespace });
      return { pid: r.pid };
    },
    async delete(req, ctx) {
      const ns = ctx.namespace();
      const c = containers.get(ns, req.containerId);
      if (!tasks.has(ns, c.id)) throw taskNotFound(c.id);
      const exit = await tasks.delete(ns, c.id);
      return {
        pid: exit.pid,
        exitStatus: exit.exitStatus,
        exitedAt: exit.exitedAt ? timestampFromDate(exit.exitedAt) : zeroTime(),
      };
    },
    async deleteProcess(req, ctx) {
      const shim = getTask(ctx.namespace(), req.containerId);
      const r = await shim.task.delete({ id: shim.id, execId: req.execId }, { namespace: shim.namespace });
      return { id: req.execId, pid: r.pid, exitStatus: r.exitStatus, exitedAt: r.exitedAt };
    },
    async get(req, ctx) {
      const shim = getTask(ctx.namespace(), req.containerId);
      return { process: await processInfo(shim, req.execId) };
    },
    async list(_req, ctx) {
      const ns = ctx.namespace();
      const out = [];
      for (const shim of tasks.list(ns)) {
        try {
          out.push(await processInfo(shim, ""));
        } catch (err) {
          if (!isNotFound(err)) throw err;
        }
      }
      return { tasks: out };
    },
    async kill(req, ctx) {
      const shim = getTask(ctx.namespace(), req.containerId);
      await shim.task.kill(
        { id: shim.id, execId: req.execId, signal: req.signal, all: req.all },
        { namespace: shim.namespace },
      );
      return empty();
    },
    async exec(req, ctx) {
      if (!req.execId) throw withMessage("invalid argument", "exec id cannot be empty");
      const shim = getTask(ctx.namespace(), req.containerId);
      await shim.task.exec(
        {
          id: shim.id,
          execId: req.execId,
          terminal: req.terminal,
          stdin: req.stdin,
          stdout: req.stdout,
          stderr: req.stderr,
          spec: req.spec,
        },
        { namespace: shim.namespace },
      );
      return empty();
    },
    async resizePty(req, ctx) {
      const shim = getTask(ctx.namespace(), req.containerId);
      await shim.task.resizePty(
        { id: shim.id, execId: req.execId, width: req.width, height: req.height },
        { namespace: shim.namespace },
      );
      return empty();
    },
    async closeIO(req, ctx) {
      const shim = getTask(ctx.namespace(), req.containerId);
      if (req.stdin)
        await shim.task.closeIO(
          { id: shim.id, execId: req.execId, stdin: true },
          { namespace: shim.namespace },
        );
      return empty();
    },
    async pause(req, ctx) {
      const shim = getTask(ctx.namespace(), req.containerId);
      await shim.task.pause({ id: shim.id }, { namespace: shim.namespace });
      return empty();
    },
    async resume(req, ctx) {
      const shim = getTask(ctx.namespace(), req.containerId);
      await shim.task.resume({ id: shim.id }, { namespace: shim.namespace });
      return empty();
    },
    async listPids(req, ctx) {
      const shim = getTask(ctx.namespace(), req.containerId);
      const r = await shim.task.pids({ id: shim.id }, { namespace: shim.namespace });
      return { processes: r.processes.map((p) => ({ pid: p.pid, info: p.info })) };
    },
    checkpoint() {
      throw withMessage("not implemented", "checkpoint is not supported by berth: no CRIU on this host");
    },
    async update(req, ctx) {
      const shim = getTask(ctx.namespace(), req.containerId);
      await shim.task.update(
        { id: shim.id, resources: req.resources, annotations: req.annotations },
        { namespace: shim.namespace },
      );
      return empty();
    },
    async metrics(req, ctx) {
      const ns = ctx.namespace();
      const filter = parseFilters(req.filters);
      const metrics = [];
      for (const shim of tasks.list(ns)) {
        const match = filter.match((fp) => {
          switch (fp[0]) {
            case "id":
              return shim.id;
            case "namespace":
              return shim.namespace;
            case "runtime":
              return shim.runtime;
            default:
              return undefined;
          }
        });
        if (!match) continue;
        try {
          const r = await shim.task.stats({ id: shim.id }, { namespace: shim.namespace });
          metrics.push({ timestamp: timestampFromDate(new Date()), id: shim.id, data: r.stats });
        } catch (err) {
          if (isNotFound(err)) continue;
          log.error("collecting metrics", { id: shim.id, error: (err as Error).message });
        }
      }
      return { metrics };
    },
    async wait(req, ctx) {
      const shim = getTask(ctx.namespace(), req.containerId);
      const r = await shim.task.wait(
        { id: shim.id, execId: req.execId },
        { namespace: shim.namespace, signal: ctx.signal },
      );
      return { exitStatus: r.exitStatus, exitedAt: r.exitedAt };
    },
  };
}
