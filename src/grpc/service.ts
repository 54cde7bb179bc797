// berth's gRPC layer in one import: the typed handler shapes and per-call context
// (handlers.ts, served by h2server.ts) and the grpc-js codec the client uses (grpcjs.ts).

export { grpcDefinition } from "./grpcjs.js";
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
