import { create } from "@bufbuild/protobuf";
import { EmptySchema, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { errInvalidArgument } from "../base/errdefs.js";
import { validateIdentifier } from "../base/identifiers.js";
import type { Exchange } from "../core/events/exchange.js";
import { validateTopic } from "../core/events/exchange.js";
import type { Events } from "../gen/containerd/services/events/v1/events_pb.js";
import type { ServiceImpl } from "../grpc/service.js";

export function eventsService(exchange: Exchange): ServiceImpl<typeof Events> {
  return {
    publish(req, ctx) {
      const ns = ctx.namespace();
      if (!req.event) throw errInvalidArgument("event must be set");
      exchange.publish(ns, req.topic, req.event);
      return create(EmptySchema);
    },
    forward(req) {
      const env = req.envelope;
      if (!env) throw errInvalidArgument("envelope must be set");
      validateIdentifier(env.namespace);
      validateTopic(env.topic);
      exchange.forward({
        timestamp: env.timestamp ? timestampDate(env.timestamp) : new Date(),
        namespace: env.namespace,
        topic: env.topic,
        event: env.event,
      });
      return create(EmptySchema);
    },
    async *subscribe(req, ctx) {
      for await (const e of exchange.subscribe(req.filters, ctx.signal)) {
        yield {
          timestamp: timestampFromDate(e.timestamp),
          namespace: e.namespace,
          topic: e.topic,
          event: e.event,
        };
      }
    },
  };
}
