import type { Version } from "../gen/containerd/services/version/v1/version_pb.js";
import type { ServiceImpl } from "../grpc/service.js";

export function versionService(version: string, revision: string): ServiceImpl<typeof Version> {
  const res = { version, revision };
  return { version: () => res };
}
