import { type Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import type { ServiceImpl } from "../grpc/service.js";

/** grpc.health.v1: the daemon serves once its plugins are up; it says NOT_SERVING while stopping. */
export function healthService(serving: () => boolean): ServiceImpl<typeof Health> {
  const status = () =>
    serving() ? HealthCheckResponse_ServingStatus.SERVING : HealthCheckResponse_ServingStatus.NOT_SERVING;
  return {
    check: () => ({ status: status() }),
    async *watch(_req, ctx) {
      let last: HealthCheckResponse_ServingStatus | undefined;
      while (!ctx.signal.aborted) {
        const s = status();
        if (s !== last) {
          last = s;
          yield { status: s };
        }
        await new Promise((r) => setTimeout(r, 1000));
      }
    },
  };
}
