// The CRI RuntimeService and ImageService, assembled from their parts: runtime information
// (runtime-info.ts), pod sandboxes (pods.ts), containers (containers.ts) and images (images.ts).
// A method no part implements answers Unimplemented naming itself, so a kubelet or crictl sees
// which call berth lacks instead of a generic "unknown method". Parts are merged in order; the
// first to implement a method serves it.
import type { DescService } from "@bufbuild/protobuf";
import { errNotImplemented } from "../base/errdefs.js";
import { ImageService, RuntimeService } from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import type { ServiceImpl } from "../grpc/service.js";
import { containerMethods } from "./containers.js";
import type { CriDeps, ImageMethods, RuntimeMethods } from "./context.js";
import { imageMethods } from "./images.js";
import { podSandboxMethods } from "./pods.js";
import { type RuntimeInfo, runtimeInfoMethods } from "./runtime-info.js";
import { streamingMethods } from "./streaming/methods.js";

export interface CriServices {
  runtime: ServiceImpl<typeof RuntimeService>;
  image: ServiceImpl<typeof ImageService>;
  info: RuntimeInfo;
}

/**
 * Every method of `desc` from the first part that has it (bound to that part, so parts may be
 * class instances), the rest answering Unimplemented.
 */
export function complete<S extends DescService>(desc: S, parts: object[]): ServiceImpl<S> {
  const out: Record<string, unknown> = {};
  for (const m of desc.methods) {
    const part = parts.find((p) => typeof (p as Record<string, unknown>)[m.localName] === "function") as
      | Record<string, (...a: unknown[]) => unknown>
      | undefined;
    if (part) {
      out[m.localName] = part[m.localName]!.bind(part);
      continue;
    }
    const what = `${desc.typeName}/${m.name}`; // reads "<service>/<method>: not implemented"
    out[m.localName] =
      m.methodKind === "server_streaming" || m.methodKind === "bidi_streaming"
        ? () => ({
            [Symbol.asyncIterator]: () => ({
              next: () => Promise.reject(errNotImplemented(what)),
            }),
          })
        : () => {
            throw errNotImplemented(what);
          };
  }
  return out as ServiceImpl<S>;
}

export function criServices(deps: CriDeps): CriServices {
  const info = runtimeInfoMethods(deps);
  const parts: RuntimeMethods[] = [
    info.methods,
    podSandboxMethods(deps),
    containerMethods(deps),
    streamingMethods(deps),
  ];
  const images: ImageMethods = imageMethods(deps);
  return {
    runtime: complete(RuntimeService, parts),
    image: complete(ImageService, [images]),
    info,
  };
}
