// A gRPC plugin's instance: the services it serves. The daemon registers every ok plugin of
// type io.containerd.grpc.v1 on its server.
import type { DescService } from "@bufbuild/protobuf";
import type { ServiceImpl } from "../grpc/service.js";

export interface GrpcRegistration {
  desc: DescService;
  impl: unknown;
}

export interface GrpcServicePlugin {
  services: GrpcRegistration[];
}

export function registration<S extends DescService>(desc: S, impl: ServiceImpl<S>): GrpcRegistration {
  return { desc, impl };
}
