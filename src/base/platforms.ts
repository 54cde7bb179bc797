// OCI platforms, the one home for them: parse `os/arch[/variant]`, normalise the common aliases,
// format, the host's platform, and match a manifest's platform against the wanted ones (containerd's rules: arm64's v8 and
// amd64's v1 are the defaults and compare equal to no variant; arm defaults to v7).

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
  osVersion?: string;
  osFeatures?: string[];
}

const ARCH_ALIASES: Record<string, string> = {
  x86_64: "amd64",
  "x86-64": "amd64",
  aarch64: "arm64",
  armhf: "arm",
  armel: "arm",
  i386: "386",
};

export function normalizePlatform(p: Platform): Platform {
  const os = (p.os || "linux").toLowerCase();
  let architecture = (p.architecture || "").toLowerCase();
  let variant = (p.variant ?? "").toLowerCase();
  if (p.architecture === "armhf") variant ||= "v7";
  if (p.architecture === "armel") variant ||= "v6";
  architecture = ARCH_ALIASES[architecture] ?? architecture;
  if (architecture === "arm64" && (variant === "v8" || variant === "8")) variant = "";
  if (architecture === "amd64" && (variant === "v1" || variant === "1")) variant = "";
  if (architecture === "arm") {
    if (variant === "") variant = "v7";
    else if (/^\d+$/.test(variant)) variant = `v${variant}`;
  }
  return { ...p, os, architecture, variant };
}

/** `linux/arm64/v8` (the OS may be left out: `arm64` is `linux/arm64`). */
export function parsePlatform(s: string): Platform {
  const parts = s.trim().split("/");
  if (parts.some((x) => x === "") || parts.length > 3)
    throw new Error(`${JSON.stringify(s)}: invalid platform, expected os/arch[/variant]`);
  if (parts.length === 1) {
    const x = parts[0]!.toLowerCase();
    if (["linux", "windows", "darwin", "freebsd"].includes(x))
      return normalizePlatform({ os: x, architecture: hostArch() });
    return normalizePlatform({ os: "linux", architecture: x });
  }
  return normalizePlatform({ os: parts[0]!, architecture: parts[1]!, variant: parts[2] });
}

/** `os/arch[/variant]`; `unknown` without an OS, as containerd's platforms.Format. */
export function formatPlatform(p: Pick<Platform, "os" | "architecture" | "variant">): string {
  if (!p.os) return "unknown";
  return [p.os, p.architecture, p.variant].filter((x) => x).join("/");
}

function hostArch(): string {
  const a = process.arch;
  const names: Record<string, string> = { x64: "amd64", ia32: "386", ppc64: "ppc64le" };
  return names[a] ?? a;
}

/** The platform of this machine (containerd's platforms.DefaultSpec()). */
export function hostPlatform(): Platform {
  const p = normalizePlatform({ os: "linux", architecture: hostArch() });
  // containerd names arm64 hosts with their variant; matching treats v8 and none alike
  return p.architecture === "arm64" ? { ...p, variant: "v8" } : p;
}

/** Does a manifest's platform satisfy the wanted one? */
export function platformMatches(want: Platform, have: Platform | undefined): boolean {
  if (!have) return false;
  const w = normalizePlatform(want);
  const h = normalizePlatform(have);
  return w.os === h.os && w.architecture === h.architecture && (w.variant ?? "") === (h.variant ?? "");
}

export const matchesAny = (wanted: Platform[], have: Platform | undefined) =>
  wanted.some((w) => platformMatches(w, have));
