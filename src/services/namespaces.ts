import { create } from "@bufbuild/protobuf";
import { EmptySchema } from "@bufbuild/protobuf/wkt";
import { errInvalidArgument, errNotFound } from "../base/errdefs.js";
import type { NamespaceStore } from "../core/namespaces/store.js";
import type { Namespaces } from "../gen/containerd/services/namespaces/v1/namespace_pb.js";
import type { ServiceImpl } from "../grpc/service.js";

export function namespacesService(store: NamespaceStore): ServiceImpl<typeof Namespaces> {
  return {
    get(req) {
      const ns = store.get(req.name);
      // containerd answers Get for a namespace that exists only implicitly (no row yet) with
      // just its name; dockerd relies on that at startup for "moby".
      if (!ns) {
        if (!req.name) throw errInvalidArgument("namespace name must not be empty");
        return { namespace: { name: req.name, labels: {} } };
      }
      return { namespace: ns };
    },
    list() {
      return { namespaces: store.list() };
    },
    create(req, ctx) {
      const ns = req.namespace;
      if (!ns) throw errInvalidArgument("namespace must be set");
      return { namespace: store.create(ns.name, ns.labels, ctx.optionalNamespace() ?? ns.name) };
    },
    update(req, ctx) {
      const ns = req.namespace;
      if (!ns) throw errInvalidArgument("namespace must be set");
      return {
        namespace: store.update(
          ns.name,
          ns.labels,
          req.updateMask?.paths ?? [],
          ctx.optionalNamespace() ?? ns.name,
        ),
      };
    },
    delete(req, ctx) {
      if (!req.name) throw errNotFound('namespace ""');
      store.delete(req.name, ctx.optionalNamespace() ?? req.name);
      return create(EmptySchema);
    },
  };
}
