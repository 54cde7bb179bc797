// Which config keys a reload applies without restarting berthd. Everything else changed by a
// reload is reported as "needs restart" with its key. Shared by the reload code (what to apply:
// src/cmd/berthd/reload.ts, whose parts must cover exactly these; test/unit/config-reload.test.ts
// checks) and the generated configuration reference (the "reloads live" column).
//
// A path is dotted TOML, with plugin tables quoted as in the file:
// `plugins."io.containerd.grpc.v1.cri".registry`. A key is live when its path equals an entry
// or lies under one.

const CRI = 'plugins."io.containerd.grpc.v1.cri"';
const GC = 'plugins."io.containerd.gc.v1.scheduler"';

export const LIVE_KEYS: readonly string[] = [
  "debug.level",
  "debug.format",
  "metrics.address",
  "metrics.grpc_histogram",
  `${GC}.pause_threshold`,
  `${GC}.deletion_threshold`,
  `${GC}.mutation_threshold`,
  `${GC}.schedule_delay`,
  `${CRI}.registry`,
  `${CRI}.sandbox_image`,
  `${CRI}.max_container_log_line_size`,
  `${CRI}.stream_idle_timeout`,
  `${CRI}.cni.conf_dir`,
  `${CRI}.cni.max_conf_num`,
  `${CRI}.cni.conf_template`,
];

/** True when a change at `path` is applied by a reload. */
export function isLiveKey(path: string): boolean {
  return LIVE_KEYS.some((k) => path === k || path.startsWith(`${k}.`));
}
