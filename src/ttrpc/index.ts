// berth's ttrpc: the transport containerd speaks with its shims (task v2 API, events back).
export { type CallOptions, type ClientStream, TtrpcClient, type TtrpcServiceClient } from "./client.js";
export { TtrpcCallContext, TtrpcServer, type TtrpcServerOptions, type TtrpcServiceImpl } from "./server.js";
export { Flag, MAX_MESSAGE_LENGTH, MessageType, NAMESPACE_KEY } from "./wire.js";
