// Media types a registry client deals in, and the Accept header for manifests.

export const MediaTypes = {
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  dockerManifestList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerSchema1: "application/vnd.docker.distribution.manifest.v1+json",
  dockerSchema1Signed: "application/vnd.docker.distribution.manifest.v1+prettyjws",
} as const;

export const MANIFEST_ACCEPT = [
  MediaTypes.ociManifest,
  MediaTypes.ociIndex,
  MediaTypes.dockerManifest,
  MediaTypes.dockerManifestList,
  "*/*",
].join(", ");

const MANIFEST_TYPES = new Set<string>([
  MediaTypes.ociIndex,
  MediaTypes.ociManifest,
  MediaTypes.dockerManifestList,
  MediaTypes.dockerManifest,
]);

export const isManifestType = (mt: string) => MANIFEST_TYPES.has(mt);
/** An OCI index or a Docker manifest list. */
export const isIndexType = (mt: string) => mt === MediaTypes.ociIndex || mt === MediaTypes.dockerManifestList;
/** An OCI image manifest or a Docker schema-2 manifest. */
export const isImageManifestType = (mt: string) =>
  mt === MediaTypes.ociManifest || mt === MediaTypes.dockerManifest;
export const isSchema1 = (mt: string) =>
  mt === MediaTypes.dockerSchema1 || mt === MediaTypes.dockerSchema1Signed;

/** An OCI descriptor (the fields the registry client needs). */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}
