// Shared integration fixture: a real registry on 127.0.0.1 holding busybox images built at test time.
import { type BuiltImage, buildBusyboxImage, pushImage } from "./images.js";
import { type Registry, startRegistry } from "./registry.js";

export const TWO_PLATFORMS = [
  { os: "linux", architecture: "amd64" },
  { os: "linux", architecture: "arm64", variant: "v8" },
];

export interface RegistryWithBusybox {
  reg: Registry;
  /** linux/amd64 only, pushed as `<repo>:1`. */
  single: BuiltImage;
  /** An index for linux/amd64 and linux/arm64/v8, pushed as `<repo>:multi`. */
  multi: BuiltImage;
  ref1: string;
  refMulti: string;
}

export async function registryWithBusybox(repo: string): Promise<RegistryWithBusybox> {
  const reg = await startRegistry();
  const single = buildBusyboxImage();
  const multi = buildBusyboxImage({ platforms: TWO_PLATFORMS });
  await pushImage(reg.url, repo, "1", single);
  await pushImage(reg.url, repo, "multi", multi);
  return { reg, single, multi, ref1: `${reg.host}/${repo}:1`, refMulti: `${reg.host}/${repo}:multi` };
}
