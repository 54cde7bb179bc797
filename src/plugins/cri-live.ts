// The CRI plugin's part of a config reload: applying the live keys (live-keys.ts) to the running
// plugin (what a new section may not hold is cri-check.ts). Every CRI code path reads these
// keys from the plugin's config object when it starts a piece of work (a pull reads `registry`
// once, a pod `sandbox_image`, a container's log copy `max_container_log_line_size`), so
// replacing a key's value there is an atomic swap: work in flight keeps what it started with.
import { parseDuration } from "../base/duration.js";
import type { CriConfig } from "../cri/config.js";
import type { CriDeps } from "../cri/context.js";
import { criState } from "../cri/state.js";
import type { StreamServer } from "../cri/streaming/server.js";

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

/** Apply the live keys of `next` (already checked) to the running plugin; returns the undo. */
export function applyCriLive(deps: CriDeps, streams: StreamServer, next: CriConfig): () => void {
  const cfg = deps.config;
  const prev = {
    registry: cfg.registry,
    sandbox_image: cfg.sandbox_image,
    max_container_log_line_size: cfg.max_container_log_line_size,
    stream_idle_timeout: cfg.stream_idle_timeout,
  };
  const cni = criState(deps).cni;
  const cniNext = {
    confDir: next.cni.conf_dir,
    maxConfNum: next.cni.max_conf_num,
    confTemplate: next.cni.conf_template,
  };
  const cniChanged =
    cfg.cni.conf_dir !== next.cni.conf_dir ||
    cfg.cni.max_conf_num !== next.cni.max_conf_num ||
    cfg.cni.conf_template !== next.cni.conf_template;
  const cniPrev = { ...cfg.cni };
  const set = (v: typeof prev, c: typeof cniPrev) => {
    cfg.registry = v.registry;
    cfg.sandbox_image = v.sandbox_image;
    cfg.max_container_log_line_size = v.max_container_log_line_size;
    cfg.stream_idle_timeout = v.stream_idle_timeout;
    // connections accepted from now on get the new idle timeout
    streams.opts.idleTimeoutMs = parseDuration(v.stream_idle_timeout || "0");
    cfg.cni.conf_dir = c.conf_dir;
    cfg.cni.max_conf_num = c.max_conf_num;
    cfg.cni.conf_template = c.conf_template;
  };
  set(
    {
      // a copy: the new file's tables stay the reload's baseline, untouched by later swaps
      registry: same(prev.registry, next.registry) ? prev.registry : structuredClone(next.registry),
      sandbox_image: next.sandbox_image,
      max_container_log_line_size: next.max_container_log_line_size,
      stream_idle_timeout: next.stream_idle_timeout,
    },
    {
      ...cfg.cni,
      conf_dir: next.cni.conf_dir,
      max_conf_num: next.cni.max_conf_num,
      conf_template: next.cni.conf_template,
    },
  );
  const cniOld = cniChanged ? cni.reconfigure(cniNext) : undefined;
  return () => {
    set(prev, cniPrev);
    if (cniOld) cni.reconfigure(cniOld);
  };
}

/** Watch conf_dir for the plugin's lifetime (containerd reloads CNI configs on file changes). */
export function watchCniConfDir(deps: CriDeps, onClose: (fn: () => void) => void): void {
  const cni = criState(deps).cni;
  cni.watch();
  onClose(() => cni.unwatch());
}
