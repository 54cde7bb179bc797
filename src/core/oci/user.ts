// Users and groups of a container's root filesystem: resolve a `user[:group]` string (names or
// numbers) to the OCI process user from the rootfs's /etc/passwd and /etc/group, as containerd's
// spec options do (WithUser, WithUserID, WithUsername, WithAdditionalGIDs). Paths inside the rootfs
// are resolved with symlinks kept inside it.
import { lstatSync, readFileSync, readlinkSync } from "node:fs";
import path from "node:path";

export interface ProcessUser {
  uid: number;
  gid: number;
  additionalGids?: number[];
}

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

export interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

export const ERR_NO_USERS = "no users found";
export const ERR_NO_GROUPS = "no groups found";

/**
 * `p` (absolute or relative, inside the container) as a host path below `root`: symlinks are
 * followed with `root` as their `/`, and `..` never climbs above it. Missing components are kept.
 */
export function pathInRoot(root: string, p: string): string {
  const base = path.resolve(root);
  let pending = p.split("/").filter((c) => c !== "" && c !== ".");
  const done: string[] = [];
  let links = 0;
  while (pending.length > 0) {
    const c = pending.shift() as string;
    if (c === "..") {
      done.pop();
      continue;
    }
    const host = path.join(base, ...done, c);
    let target: string | undefined;
    try {
      if (lstatSync(host).isSymbolicLink()) target = readlinkSync(host);
    } catch {
      // missing: keep the name as it is
    }
    if (target === undefined) {
      done.push(c);
      continue;
    }
    if (++links > 255) throw new Error(`too many symlinks resolving ${p} in ${root}`);
    const parts = target.split("/").filter((x) => x !== "" && x !== ".");
    if (target.startsWith("/")) done.length = 0;
    pending = [...parts, ...pending];
  }
  return path.join(base, ...done);
}

const toInt = (s: string | undefined): number => {
  const v = s?.trim() ?? "";
  return /^[+-]?\d+$/.test(v) ? Number(v) : 0;
};

function lines(file: string): string[][] {
  return readFileSync(file, "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "")
    .map((l) => l.split(":"));
}

/** Entries of `<root>/etc/passwd` (throws ENOENT when there is no such file). */
export function readPasswd(root: string): PasswdEntry[] {
  return lines(pathInRoot(root, "/etc/passwd")).map((f) => ({
    name: f[0] ?? "",
    uid: toInt(f[2]),
    gid: toInt(f[3]),
    home: f[5] ?? "",
    shell: f[6] ?? "",
  }));
}

/** Entries of `<root>/etc/group` (throws ENOENT when there is no such file). */
export function readGroup(root: string): GroupEntry[] {
  return lines(pathInRoot(root, "/etc/group")).map((f) => ({
    name: f[0] ?? "",
    gid: toInt(f[2]),
    members: (f[3] ?? "")
      .split(",")
      .map((m) => m.trim())
      .filter(Boolean),
  }));
}

const isMissing = (err: unknown) => (err as NodeJS.ErrnoException)?.code === "ENOENT";
const isNumber = (s: string) => /^[+-]?\d+$/.test(s);
/** A decimal id as the kernel's 32-bit id (negative numbers wrap like a uint32 conversion). */
const id32 = (s: string) => Number(BigInt.asUintN(32, BigInt(s)));

function userBy(root: string, pred: (u: PasswdEntry) => boolean): PasswdEntry {
  const u = readPasswd(root).find(pred);
  if (!u) throw new Error(ERR_NO_USERS);
  return u;
}

/** `gid` first in the additional groups unless already there. */
function withPrimaryGid(u: ProcessUser): ProcessUser {
  const extra = u.additionalGids ?? [];
  return { ...u, additionalGids: extra.includes(u.gid) ? extra : [u.gid, ...extra] };
}

/**
 * The process user for `user` (`uid`, `name`, `uid:gid`, `name:group`, mixed) in the rootfs at
 * `root`. A lone uid takes its gid from /etc/passwd (0 when the uid is not listed or there is no
 * passwd file); names must exist. The result's additional gids hold just the primary gid.
 */
export function resolveUser(user: string, root: string): ProcessUser {
  const parts = user.split(":");
  if (parts.length === 1) {
    const s = parts[0] as string;
    if (isNumber(s)) {
      const uid = id32(s);
      try {
        const u = userBy(root, (x) => x.uid === uid);
        return withPrimaryGid({ uid: u.uid, gid: u.gid });
      } catch (err) {
        if (isMissing(err) || (err as Error).message === ERR_NO_USERS) return withPrimaryGid({ uid, gid: 0 });
        throw err;
      }
    }
    const u = userBy(root, (x) => x.name === s);
    return withPrimaryGid({ uid: u.uid, gid: u.gid });
  }
  if (parts.length === 2) {
    const [us, gs] = parts as [string, string];
    let uid = isNumber(us) ? id32(us) : 0;
    let gid = isNumber(gs) ? id32(gs) : 0;
    if (!isNumber(us)) uid = userBy(root, (x) => x.name === us).uid;
    if (!isNumber(gs)) {
      const g = readGroup(root).find((x) => x.name === gs);
      if (!g) throw new Error(ERR_NO_GROUPS);
      gid = g.gid;
    }
    return withPrimaryGid({ uid, gid });
  }
  throw new Error(`invalid USER value ${user}`);
}

/** `user` resolved without a rootfs: numbers only (a lone uid gets gid 0). */
export function numericUser(user: string): ProcessUser | undefined {
  const parts = user.split(":");
  if (parts.length === 1 && isNumber(parts[0] as string))
    return withPrimaryGid({ uid: id32(parts[0]!), gid: 0 });
  if (parts.length === 2 && isNumber(parts[0] as string) && isNumber(parts[1] as string))
    return withPrimaryGid({ uid: id32(parts[0]!), gid: id32(parts[1]!) });
  return undefined;
}

/**
 * The supplementary groups of `user` (a uid or a name) from the rootfs's /etc/group: the groups
 * listing the user as a member, other than the one named like the user; then the primary gid
 * first unless present. A uid missing from /etc/passwd, or no group file, gives no extra groups.
 */
export function additionalGids(user: string, root: string, current: ProcessUser): ProcessUser {
  let name = user;
  if (isNumber(user)) {
    const uid = id32(user);
    try {
      name = userBy(root, (x) => x.uid === uid).name;
    } catch (err) {
      if (isMissing(err) || (err as Error).message === ERR_NO_USERS)
        return withPrimaryGid({ ...current, additionalGids: [] });
      throw err;
    }
  }
  let gids: number[] = [];
  try {
    gids = readGroup(root)
      .filter((g) => g.name !== name && g.members.includes(name))
      .map((g) => g.gid);
  } catch (err) {
    if (!isMissing(err)) throw err;
  }
  return withPrimaryGid({ ...current, additionalGids: gids });
}
