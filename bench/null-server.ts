// The small-call rows' floor: a gRPC server that does nothing but answer. It serves the three
// calls of bench/core.ts's API rows (Namespaces/List, Namespaces/Get, Version) with constant
// answers, on berth's own HTTP/2 layer (the one berthd serves with), in a Node process of its
// own. Its time is the client's and the transport's share of a call: a daemon whose handlers
// took no time at all would do no better through the same client on the same machine, so its
// ratio to containerd is the floor of those rows for berthd's transport in that run (within the
// run's noise: the two are timed one after the other).
//
//   node dist/bench/null-server.js <socket path>
//
// It prints "listening" once the socket accepts, and exits on SIGTERM.
import { unlinkSync } from "node:fs";
import { errNotImplemented } from "../src/base/errdefs.js";
import { Namespaces } from "../src/gen/containerd/services/namespaces/v1/namespace_pb.js";
import { Version } from "../src/gen/containerd/services/version/v1/version_pb.js";
import { H2GrpcServer } from "../src/grpc/h2server.js";

const socket = process.argv[2];
if (!socket) {
  console.error("usage: null-server <socket path>");
  process.exit(2);
}

// berthd's answers in a core.js run with --skip-content: the one namespace the API rows create
// (after the content rows, berthd's List also holds `default`, a few bytes more)
const bench = { name: "bench", labels: { purpose: "bench" } };
const listAnswer = { namespaces: [bench] };
const getAnswer = { namespace: bench };
const versionAnswer = { version: "null", revision: "" };

const notServed = () => {
  throw errNotImplemented("the null server answers List, Get and Version only");
};
const server = new H2GrpcServer();
server.addService(Namespaces, {
  list: () => listAnswer,
  get: () => getAnswer,
  create: notServed,
  update: notServed,
  delete: notServed,
});
server.addService(Version, { version: () => versionAnswer });
try {
  unlinkSync(socket);
} catch {
  // no stale socket
}
await server.listen(socket);
process.stdout.write("listening\n");
process.on("SIGTERM", () => {
  server.forceShutdown();
  process.exit(0);
});
