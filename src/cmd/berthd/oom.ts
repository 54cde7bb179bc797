import { writeFileSync } from "node:fs";
import type { Logger } from "../../base/log.js";

/**
 * Apply oom_score to the daemon. Lowering it needs CAP_SYS_RESOURCE, which root lacks on some
 * hosts: like containerd, log the failure and keep running.
 */
export function applyOomScore(score: number, log: Logger): void {
  if (score === 0) return;
  if (score < -1000 || score > 1000) {
    log.error("oom_score out of range, ignored", { oom_score: score });
    return;
  }
  try {
    writeFileSync("/proc/self/oom_score_adj", String(score));
  } catch (err) {
    log.error("failed to adjust OOM score for daemon", { error: (err as Error).message, oom_score: score });
  }
}
