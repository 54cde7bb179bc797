// The server side of berth's gRPC layer, in one import: the typed handler shapes and the
// per-call context (handlers.ts), berthd's HTTP/2 transport (h2server.ts), and the grpc-js
// wrapping kept for the client and for tests (grpcjs.ts).

export { grpcDefinition, grpcHandlers } from "./grpcjs.js";
export {
  CallContext,
  type CallHeaders,
  type CallObserver,
  EncodedMessage,
  LEASE_HEADER,
  type MethodEntry,
  type MethodKind,
  methodEntries,
  NAMESPACE_HEADER,
  type ServiceImpl,
} from "./handlers.js";
