// Names of pods and containers as the kubelet spells them, and the reservation of those names.
//
// A kubelet whose RunPodSandbox/CreateContainer call times out retries it with the same metadata
// while the first attempt may still be running. Rather than refuse the retry with "name is
// reserved" (and leave the kubelet looping until the first attempt's object is garbage), the same
// request shares the name: a retry waits for the attempt in flight, or is handed the object it
// made. An attempt that fails releases the name, so nothing blocks the next one.
import { createHash } from "node:crypto";
import { toBinary } from "@bufbuild/protobuf";
import { BerthError } from "../base/errdefs.js";
import {
  type ContainerConfig,
  ContainerConfigSchema,
  type PodSandboxConfig,
  PodSandboxConfigSchema,
} from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";

interface PodMeta {
  name: string;
  namespace: string;
  uid: string;
  attempt: number;
}

interface ContainerMeta {
  name: string;
  attempt: number;
}

/** `<name>_<namespace>_<uid>_<attempt>`: the kubelet's pod sandbox name. */
export function sandboxName(m: PodMeta): string {
  return [m.name, m.namespace, m.uid, String(m.attempt)].join("_");
}

/** `<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>`: a container's name within its pod. */
export function containerName(c: ContainerMeta, pod: PodMeta): string {
  return [c.name, pod.name, pod.namespace, pod.uid, String(c.attempt)].join("_");
}

const digest = (parts: (Uint8Array | string)[]) => {
  const h = createHash("sha256");
  for (const p of parts) h.update(p).update("\0");
  return h.digest("hex");
};

/** What a RunPodSandbox asks for, as NameIndex compares requests. */
export const sandboxRequest = (cfg: PodSandboxConfig, handler: string) =>
  digest([toBinary(PodSandboxConfigSchema, cfg), handler]);

/** What a CreateContainer asks for, as NameIndex compares requests. */
export const containerRequest = (cfg: ContainerConfig, sandboxId: string) =>
  digest([toBinary(ContainerConfigSchema, cfg), sandboxId]);

interface Entry {
  /** The id the name is reserved for. */
  id: string;
  /** What was asked for (a digest of the request): only the same request shares the name. */
  request: string;
  /** The attempt creating it, while it runs. */
  inflight?: Promise<string>;
}

export class NameIndex {
  private readonly names = new Map<string, Entry>();

  constructor(private readonly what: "sandbox" | "container") {}

  /**
   * Create the object called `name` with `fn(id)`, reserving the name for `id` meanwhile.
   * `request` identifies what is asked for (the kubelet's config, digested). The same request for
   * a name that is being created waits for that attempt and returns its id; for a name already
   * created it returns the existing id (the first caller may never have seen the answer: its
   * deadline can pass while the answer is on its way, so whether it "gave up" is not knowable
   * here). A different request for a taken name is refused as containerd refuses it.
   */
  async create(
    name: string,
    id: string,
    request: string,
    fn: (id: string) => Promise<void>,
  ): Promise<string> {
    const cur = this.names.get(name);
    if (cur && cur.request === request) return cur.inflight ?? cur.id;
    if (cur) throw this.reserved(name, cur.id);
    const entry: Entry = { id, request };
    const run = (async () => {
      try {
        await fn(id);
      } catch (err) {
        if (this.names.get(name) === entry) this.names.delete(name);
        throw err;
      } finally {
        entry.inflight = undefined;
      }
      return id;
    })();
    entry.inflight = run;
    this.names.set(name, entry);
    return run;
  }

  /** Reserve a name for an existing object (loading after a restart). */
  reserve(name: string, id: string, request: string): void {
    const cur = this.names.get(name);
    if (cur && cur.id !== id) throw this.reserved(name, cur.id);
    this.names.set(name, { id, request });
  }

  /** Free a name (the object is removed). */
  release(name: string): void {
    this.names.delete(name);
  }

  /** The id a name is reserved for. */
  get(name: string): string | undefined {
    return this.names.get(name)?.id;
  }

  private reserved(name: string, id: string): BerthError {
    return new BerthError(
      "already exists",
      `failed to reserve ${this.what} name ${JSON.stringify(name)}: name ${JSON.stringify(name)} is reserved for ${JSON.stringify(id)}`,
    );
  }
}
