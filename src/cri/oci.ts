// Small spec edits both the pause container's and an application container's spec make, over
// the OCI spec types and defaults of core/oci.
import { currentCapabilities } from "../core/oci/linux.js";
import type { Spec, SpecMount } from "../core/oci/spec.js";

export type { Spec, SpecMount } from "../core/oci/spec.js";

/** Put a mount in place of any mount at the same destination (a later mount wins, as in CRI). */
export function setMount(spec: Spec, m: SpecMount): void {
  spec.mounts = spec.mounts.filter((x) => x.destination !== m.destination);
  spec.mounts.push(m);
}

export function removeMount(spec: Spec, destination: string): void {
  spec.mounts = spec.mounts.filter((x) => x.destination !== destination);
}

/** Join the namespace at `path`, create a new one (no path), or use the host's (`null`). */
export function setNamespace(spec: Spec, type: string, path?: string | null): void {
  const rest = spec.linux.namespaces.filter((n) => n.type !== type);
  spec.linux.namespaces = path === null ? rest : [...rest, path ? { type, path } : { type }];
}

/** `NET_ADMIN` or `CAP_NET_ADMIN` as the OCI spec names capabilities. */
export function capName(c: string): string {
  const u = c.toUpperCase();
  return u.startsWith("CAP_") ? u : `CAP_${u}`;
}

/** Apply the CRI capability add/drop lists (`ALL` allowed in either: berthd's own set) to a capability list. */
export function adjustCapabilities(base: readonly string[], add: string[], drop: string[]): string[] {
  let caps = [...base];
  if (add.some((c) => c.toUpperCase() === "ALL")) caps = currentCapabilities();
  if (drop.some((c) => c.toUpperCase() === "ALL")) caps = [];
  for (const a of add) {
    if (a.toUpperCase() === "ALL") continue;
    const n = capName(a);
    if (!caps.includes(n)) caps.push(n);
  }
  for (const d of drop) {
    if (d.toUpperCase() === "ALL") continue;
    const n = capName(d);
    caps = caps.filter((c) => c !== n);
  }
  return caps;
}

export function setCapabilities(spec: Spec, caps: readonly string[]): void {
  spec.process.capabilities = { bounding: [...caps], effective: [...caps], permitted: [...caps] };
}

/**
 * A pod's or container's cgroupsPath from the kubelet's cgroup parent, decided as containerd 1.6
 * decides it: a parent whose last element is a systemd slice (the kubelet's systemd driver, e.g.
 * `kubepods-besteffort-pod<uid>.slice`) gives runc's `slice:prefix:name` form with containerd's
 * prefix, so cadvisor and the kubelet find `cri-containerd-<id>.scope` units where they look;
 * anything else is a cgroupfs path `<parent>/<id>`.
 */
export function cgroupsPath(parent: string, id: string): string {
  const trimmed = parent.replace(/\/+$/, "");
  const base = trimmed.slice(trimmed.lastIndexOf("/") + 1);
  if (base.endsWith(".slice")) return `${base}:cri-containerd:${id}`;
  return `${trimmed}/${id}`;
}

/**
 * Privileged: every capability berthd itself holds (a host may withhold some, e.g. CAP_SYS_RESOURCE,
 * and the runtime cannot grant what its caller lacks), no masked or read-only paths, writable sysfs.
 */
export function makePrivileged(spec: Spec): void {
  setCapabilities(spec, currentCapabilities());
  spec.linux.maskedPaths = [];
  spec.linux.readonlyPaths = [];
  spec.linux.seccomp = undefined;
  spec.process.apparmorProfile = undefined;
  if (spec.linux.resources) spec.linux.resources.devices = [{ allow: true, access: "rwm" }];
  for (const m of spec.mounts)
    if (m.type === "sysfs" || m.type === "cgroup") m.options = (m.options ?? []).filter((o) => o !== "ro");
}
