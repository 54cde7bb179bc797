// A gRPC service for the client and server tests: one method of each shape (and one that no
// server implements), on containerd's content messages.
import type { GenService } from "@bufbuild/protobuf/codegenv2";
import {
  InfoRequestSchema,
  InfoResponseSchema,
  ReadContentRequestSchema,
  ReadContentResponseSchema,
  WriteContentRequestSchema,
  WriteContentResponseSchema,
} from "../../src/gen/containerd/services/content/v1/content_pb.js";

export type TestMethods = {
  unary: { methodKind: "unary"; input: typeof InfoRequestSchema; output: typeof InfoResponseSchema };
  serverStream: {
    methodKind: "server_streaming";
    input: typeof ReadContentRequestSchema;
    output: typeof ReadContentResponseSchema;
  };
  clientStream: {
    methodKind: "client_streaming";
    input: typeof WriteContentRequestSchema;
    output: typeof WriteContentResponseSchema;
  };
  bidi: {
    methodKind: "bidi_streaming";
    input: typeof WriteContentRequestSchema;
    output: typeof WriteContentResponseSchema;
  };
  missing: { methodKind: "unary"; input: typeof InfoRequestSchema; output: typeof InfoResponseSchema };
};

export const TEST_SERVICE = "berth.test.v1.Test";
const methods = (
  [
    ["Unary", "unary", "unary", InfoRequestSchema, InfoResponseSchema],
    ["ServerStream", "serverStream", "server_streaming", ReadContentRequestSchema, ReadContentResponseSchema],
    [
      "ClientStream",
      "clientStream",
      "client_streaming",
      WriteContentRequestSchema,
      WriteContentResponseSchema,
    ],
    ["Bidi", "bidi", "bidi_streaming", WriteContentRequestSchema, WriteContentResponseSchema],
    ["Missing", "missing", "unary", InfoRequestSchema, InfoResponseSchema],
  ] as const
).map(([name, localName, methodKind, input, output]) => ({
  kind: "rpc",
  name,
  localName,
  methodKind,
  input,
  output,
  idempotency: 0,
  deprecated: false,
}));
export const Test = {
  kind: "service",
  typeName: TEST_SERVICE,
  name: "Test",
  methods,
  method: Object.fromEntries(methods.map((m) => [m.localName, m])),
} as unknown as GenService<TestMethods>;
