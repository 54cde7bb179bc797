// The Containers gRPC service: a thin adapter over the namespaced container store, with the
// checks containerd's containers service makes before its store sees a request.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { type Any, type AnySchema, EmptySchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { BerthError } from "../base/errdefs.js";
import type { AnyValue, Container, ContainerInput, ContainerStore } from "../core/containers/store.js";
import type {
  Container as ContainerPb,
  ContainerSchema,
  Containers,
} from "../gen/containerd/services/containers/v1/containers_pb.js";
import { keptAnswer } from "../grpc/proto-writer.js";
import type { ServiceImpl } from "../grpc/service.js";
import { containersResponse, containersResponseEach } from "./container-wire.js";

const anyToProto = (a: AnyValue): MessageInitShape<typeof AnySchema> => ({
  typeUrl: a.typeUrl,
  value: a.value,
});

const anyFromProto = (a: Any | undefined): AnyValue | undefined =>
  a ? { typeUrl: a.typeUrl, value: a.value } : undefined;

export function containerToProto(c: Container): MessageInitShape<typeof ContainerSchema> {
  const extensions: Record<string, MessageInitShape<typeof AnySchema>> = {};
  for (const [k, v] of Object.entries(c.extensions)) extensions[k] = anyToProto(v);
  return {
    id: c.id,
    labels: c.labels,
    image: c.image,
    runtime: { name: c.runtime.name, options: c.runtime.options && anyToProto(c.runtime.options) },
    spec: c.spec && anyToProto(c.spec),
    snapshotter: c.snapshotter,
    snapshotKey: c.snapshotKey,
    createdAt: timestampFromDate(c.createdAt),
    updatedAt: timestampFromDate(c.updatedAt),
    extensions,
  };
}

export function containerFromProto(c: ContainerPb | undefined): ContainerInput {
  const extensions: Record<string, AnyValue> = {};
  for (const [k, v] of Object.entries(c?.extensions ?? {})) extensions[k] = anyFromProto(v)!;
  return {
    id: c?.id ?? "",
    labels: { ...(c?.labels ?? {}) },
    image: c?.image ?? "",
    runtime: c?.runtime ? { name: c.runtime.name, options: anyFromProto(c.runtime.options) } : undefined,
    spec: anyFromProto(c?.spec),
    snapshotter: c?.snapshotter ?? "",
    snapshotKey: c?.snapshotKey ?? "",
    extensions,
  };
}

/** containerd answers a missing id on update with a bare status message. */
function idRequired(): BerthError {
  const err = new BerthError("invalid argument");
  err.message = "Container.ID required";
  return err;
}

export function containersService(store: ContainerStore): ServiceImpl<typeof Containers> {
  return {
    // the answers that carry whole records have the record(s) as their field 1: the items the
    // store keeps with each row where it has them, else encoded from the records directly
    // (container-wire.ts)
    get(req, ctx) {
      const ns = ctx.namespace();
      const item = store.getEncoded(ns, req.id);
      return item ? keptAnswer([item]) : containersResponse([store.get(ns, req.id)]);
    },
    list(req, ctx) {
      const ns = ctx.namespace();
      const items = req.filters.length === 0 ? store.listEncoded(ns) : null;
      return items ? keptAnswer(items) : containersResponseEach((fn) => store.each(ns, req.filters, fn));
    },
    async *listStream(req, ctx) {
      // the whole list is read first (one consistent view), then streamed one per message
      const ns = ctx.namespace();
      const items: Buffer[] = [];
      if (req.filters.length === 0 && store.eachEncoded(ns, (w) => items.push(w))) {
        for (const item of items) {
          if (ctx.signal.aborted) return;
          yield keptAnswer([item]);
        }
        return;
      }
      for (const c of store.list(ns, req.filters)) {
        if (ctx.signal.aborted) return;
        yield containersResponse([c]);
      }
    },
    create(req, ctx) {
      return {
        container: containerToProto(store.create(ctx.namespace(), containerFromProto(req.container))),
      };
    },
    update(req, ctx) {
      if (!req.container?.id) throw idRequired();
      const paths = req.updateMask?.paths ?? [];
      return {
        container: containerToProto(store.update(ctx.namespace(), containerFromProto(req.container), paths)),
      };
    },
    delete(req, ctx) {
      store.delete(ctx.namespace(), req.id);
      return create(EmptySchema);
    },
  };
}
