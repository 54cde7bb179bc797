// Progress of a transfer, as containerd's transfer service reports it.
import type { Descriptor } from "../images/media.js";

/** containerd's progress event names. */
export type ProgressEventName =
  | "resolving"
  | "resolved"
  | "waiting"
  | "downloading"
  | "already exists"
  | "complete"
  | "unpacking"
  | "unpacked"
  | "saved";

export interface ProgressEvent {
  event: ProgressEventName | string;
  /** What the event is about: the reference, or a blob's `<kind>-<digest>` key. */
  name: string;
  parents?: string[];
  progress?: number;
  total?: number;
  desc?: Descriptor;
}
