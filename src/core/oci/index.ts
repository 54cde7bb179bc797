// OCI runtime spec generation: the Spec types, containerd's default Linux spec and the options
// that change it (see options.ts), plus the host facts and rootfs user lookups they use.
export * from "./defaults.js";
export * from "./linux.js";
export * from "./options.js";
export * from "./spec.js";
export * from "./user.js";
