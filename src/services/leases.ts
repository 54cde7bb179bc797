import { create } from "@bufbuild/protobuf";
import { EmptySchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { errInvalidArgument } from "../base/errdefs.js";
import { type Lease, type LeaseStore, randomLeaseId } from "../core/leases/store.js";
import type { Leases } from "../gen/containerd/services/leases/v1/leases_pb.js";
import type { ServiceImpl } from "../grpc/service.js";

const toProto = (l: Lease) => ({ id: l.id, createdAt: timestampFromDate(l.createdAt), labels: l.labels });

export function leasesService(store: LeaseStore): ServiceImpl<typeof Leases> {
  return {
    create(req, ctx) {
      return { lease: toProto(store.create(ctx.namespace(), req.id || randomLeaseId(), req.labels)) };
    },
    async delete(req, ctx) {
      await store.delete(ctx.namespace(), req.id, req.sync);
      return create(EmptySchema);
    },
    list(req, ctx) {
      return { leases: store.list(ctx.namespace(), req.filters).map(toProto) };
    },
    addResource(req, ctx) {
      if (!req.resource) throw errInvalidArgument("resource must be set");
      store.addResource(ctx.namespace(), req.id, req.resource);
      return create(EmptySchema);
    },
    deleteResource(req, ctx) {
      if (!req.resource) throw errInvalidArgument("resource must be set");
      store.deleteResource(ctx.namespace(), req.id, req.resource);
      return create(EmptySchema);
    },
    listResources(req, ctx) {
      return { resources: store.listResources(ctx.namespace(), req.id) };
    },
  };
}
