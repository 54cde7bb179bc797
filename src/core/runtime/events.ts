// Where shims send their events: containerd.services.ttrpc.events.v1.Events served over ttrpc on
// berthd's `<address>.ttrpc` (the shims' TTRPC_ADDRESS), forwarded into the event exchange with the
// shim's timestamp. The task manager reads the task exits back from the exchange.
import { create, fromBinary } from "@bufbuild/protobuf";
import { EmptySchema, timestampDate } from "@bufbuild/protobuf/wkt";
import { errInvalidArgument } from "../../base/errdefs.js";
import type { Logger } from "../../base/log.js";
import { TaskExitSchema } from "../../gen/containerd/events/task_pb.js";
import { Events as TtrpcEvents } from "../../gen/containerd/services/ttrpc/events/v1/events_pb.js";
import { TtrpcServer } from "../../ttrpc/index.js";
import { type Envelope, type Exchange, validateTopic } from "../events/exchange.js";
import { nsDate, timestampNs } from "./process.js";
import type { TaskExitEvent } from "./task.js";

/** A ttrpc server (not yet listening) that forwards what shims publish into `events`. */
export function shimEventsServer(events: Exchange, log: Logger): TtrpcServer {
  const server = new TtrpcServer({
    onError: (err) => log.debug("ttrpc connection", { error: String(err) }),
  });
  server.register(TtrpcEvents, {
    forward(req) {
      const env = req.envelope;
      if (!env) throw errInvalidArgument("envelope required");
      validateTopic(env.topic);
      events.forward({
        timestamp: env.timestamp ? timestampDate(env.timestamp) : new Date(),
        namespace: env.namespace,
        topic: env.topic,
        event: env.event,
      });
      return create(EmptySchema);
    },
  });
  return server;
}

export const TASK_EXIT_TOPIC = "/tasks/exit";

/** A /tasks/exit envelope as a TaskExitEvent; undefined for anything else. */
export function taskExitOf(env: Envelope): TaskExitEvent | undefined {
  const ev = env.event;
  if (env.topic !== TASK_EXIT_TOPIC || !ev || !ev.typeUrl.endsWith(TaskExitSchema.typeName)) return undefined;
  const e = fromBinary(TaskExitSchema, ev.value);
  const ns = timestampNs(e.exitedAt) ?? BigInt(env.timestamp.getTime()) * 1_000_000n;
  return {
    namespace: env.namespace,
    id: e.containerId,
    execId: e.id === e.containerId ? "" : e.id,
    pid: e.pid,
    exitStatus: e.exitStatus,
    exitedAt: nsDate(ns),
    exitedAtNs: ns,
  };
}
