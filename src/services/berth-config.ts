// berth.config.v1.Config: the reload RPC. The work (load, check, diff, apply, roll back) is the
// daemon's (src/cmd/berthd/reload.ts), which sees every plugin; this only shapes the answer.
import { Apply, type Config } from "../gen/berth/config/v1/config_pb.js";
import type { ServiceImpl } from "../grpc/service.js";

/** One changed key, as the reload found it (values already rendered, credentials masked). */
export interface ReloadedKey {
  key: string;
  live: boolean;
  oldValue: string;
  newValue: string;
}

export interface ReloadReport {
  changes: ReloadedKey[];
  files: string[];
  warnings: string[];
}

export function configService(reload: () => Promise<ReloadReport>): ServiceImpl<typeof Config> {
  return {
    async reload() {
      const r = await reload();
      return {
        changes: r.changes.map((c) => ({
          key: c.key,
          apply: c.live ? Apply.LIVE : Apply.NEEDS_RESTART,
          oldValue: c.oldValue,
          newValue: c.newValue,
        })),
        files: r.files,
        warnings: r.warnings,
      };
    },
  };
}
