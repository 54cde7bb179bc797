// What Version/Version reports. `revision` is what `docker info` shows as the containerd version.
export const VERSION = "v0.1.0";
export const REVISION = "berth";
