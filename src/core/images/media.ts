// OCI and Docker image media types and the JSON shapes of the documents an image is made of
// (descriptor, index, manifest, image config): one definition, used by the registry client, the
// pull pipeline, the archive code and the CLI.
import type { Platform } from "../../base/platforms.js";

export const MediaTypes = {
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  dockerManifestList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerSchema1: "application/vnd.docker.distribution.manifest.v1+json",
  dockerSchema1Signed: "application/vnd.docker.distribution.manifest.v1+prettyjws",
} as const;

/** An OCI index or a Docker manifest list. */
export const isIndexType = (mt: string) => mt === MediaTypes.ociIndex || mt === MediaTypes.dockerManifestList;
/** An OCI image manifest or a Docker schema-2 manifest. */
export const isImageManifestType = (mt: string) =>
  mt === MediaTypes.ociManifest || mt === MediaTypes.dockerManifest;

/** A platform as OCI documents spell it (descriptor `platform`, image config top level). */
export interface OciPlatform {
  os: string;
  architecture: string;
  variant?: string;
  "os.version"?: string;
  "os.features"?: string[];
}

/** An OCI content descriptor. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  /** Set on an index's entries. */
  platform?: OciPlatform;
  urls?: string[];
  artifactType?: string;
}

/** An OCI image index / Docker manifest list. */
export interface Index {
  schemaVersion?: number;
  mediaType?: string;
  manifests?: Descriptor[];
  annotations?: Record<string, string>;
}

/** An OCI image manifest / Docker schema-2 manifest. */
export interface Manifest {
  schemaVersion?: number;
  mediaType?: string;
  config?: Descriptor;
  layers?: Descriptor[];
  annotations?: Record<string, string>;
}

/** The execution parameters of an image config (`config` of the OCI image config). */
export interface ImageRunConfig {
  User?: string;
  ExposedPorts?: Record<string, object>;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  Volumes?: Record<string, object>;
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
  ArgsEscaped?: boolean;
}

/** An OCI image config (application/vnd.oci.image.config.v1+json, or Docker's). */
export interface ImageConfig {
  created?: string;
  author?: string;
  os?: string;
  architecture?: string;
  variant?: string;
  "os.version"?: string;
  "os.features"?: string[];
  config?: ImageRunConfig;
  rootfs?: { type?: string; diff_ids?: string[] };
  history?: {
    created?: string;
    created_by?: string;
    author?: string;
    comment?: string;
    empty_layer?: boolean;
  }[];
}

/** The OCI spelling of a platform as ours (os.version → osVersion). */
export function toPlatform(p: OciPlatform): Platform {
  const out: Platform = { os: p.os, architecture: p.architecture };
  if (p.variant) out.variant = p.variant;
  if (p["os.version"]) out.osVersion = p["os.version"];
  if (p["os.features"]) out.osFeatures = p["os.features"];
  return out;
}

/** The platform an image config declares, or undefined when it names no architecture. */
export function configPlatform(c: ImageConfig): Platform | undefined {
  if (!c.architecture) return undefined;
  return toPlatform({
    os: c.os || "linux",
    architecture: c.architecture,
    variant: c.variant,
    "os.version": c["os.version"],
    "os.features": c["os.features"],
  });
}
