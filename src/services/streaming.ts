// The Streaming gRPC service: the first message names the stream (StreamInit), the server
// answers with an empty message once it is registered, then the stream carries Anys both ways
// for whichever call refers to it by name, until that call closes it or the client goes away.
import { create } from "@bufbuild/protobuf";
import { type Any, anyIs, anyPack, anyUnpack, EmptySchema } from "@bufbuild/protobuf/wkt";
import { errInvalidArgument } from "../base/errdefs.js";
import { AsyncQueue, type StreamManager } from "../core/pull/streams.js";
import { StreamInitSchema, type Streaming } from "../gen/containerd/services/streaming/v1/streaming_pb.js";
import type { ServiceImpl } from "../grpc/service.js";

export function streamingService(manager: StreamManager): ServiceImpl<typeof Streaming> {
  return {
    stream(reqs, ctx) {
      return (async function* () {
        const it = reqs[Symbol.asyncIterator]();
        const first = await it.next();
        if (first.done) return;
        const init = anyIs(first.value, StreamInitSchema)
          ? anyUnpack(first.value, StreamInitSchema)
          : undefined;
        if (!init?.id)
          throw errInvalidArgument("the first message of a stream must be a StreamInit with an id");
        const out = new AsyncQueue<Any>();
        const unregister = manager.register(ctx.namespace(), init.id, {
          send: (m) => out.push(m),
          recv: async () => {
            const r = await it.next();
            return r.done ? undefined : r.value;
          },
          close: () => out.end(),
        });
        const onAbort = () => out.end();
        ctx.signal.addEventListener("abort", onAbort, { once: true });
        try {
          yield anyPack(EmptySchema, create(EmptySchema));
          yield* out;
        } finally {
          ctx.signal.removeEventListener("abort", onAbort);
          unregister();
        }
      })();
    },
  };
}
