// What the registry client needs to know about media types: the Accept header for manifests and
// which types are manifests at all. The types themselves live with the image model.
import { MediaTypes } from "../images/media.js";

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
export const isSchema1 = (mt: string) =>
  mt === MediaTypes.dockerSchema1 || mt === MediaTypes.dockerSchema1Signed;
