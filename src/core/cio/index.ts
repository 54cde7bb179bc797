// Task I/O: FIFO sets piped to the caller's streams, null I/O, and the shim's log URIs.
export * from "./fifo.js";
export * from "./io.js";
export * from "./uri.js";
