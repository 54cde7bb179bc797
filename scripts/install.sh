#!/usr/bin/env bash
# `make install`: puts a built berth under $DESTDIR$PREFIX (default /opt/berth) with the commands
# linked into /usr/local/bin, the systemd unit, a default /etc/berth/config.toml (never replacing
# one that exists) and bash completions. Works offline: the production node_modules are copied
# from this checkout's (what `npm ls --omit=dev` lists), already built for this machine's Node,
# instead of being fetched and compiled again.
#
# Usage: scripts/install.sh [PREFIX=/opt/berth] [DESTDIR=/staging] [NODE=/usr/bin/node]
# (the same settings are also read from the environment, as make passes them)
set -euo pipefail

for arg in "$@"; do
  case "$arg" in
    PREFIX=* | DESTDIR=* | NODE=*) export "${arg?}" ;;
    *) echo "install: unknown argument $arg (want PREFIX=, DESTDIR=, NODE=)" >&2; exit 2 ;;
  esac
done

PREFIX=${PREFIX:-/opt/berth}
DESTDIR=${DESTDIR:-}
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODE=${NODE:-$(command -v node)}
dest="$DESTDIR$PREFIX"

case "$PREFIX" in
  /*) ;;
  *) echo "install: PREFIX must be an absolute path (got $PREFIX)" >&2; exit 1 ;;
esac
[ -f "$SRC/dist/bundle/berthd.cjs" ] || { echo "install: berth is not built (run make build)" >&2; exit 1; }
[ -x "$NODE" ] || { echo "install: no node executable (set NODE)" >&2; exit 1; }

echo "installing berth into $dest"
mkdir -p "$dest"
# A reinstall replaces the program wholesale, so files removed from berth do not linger.
rm -rf "$dest/dist" "$dest/bin" "$dest/node_modules" "$dest/docs"
mkdir -p "$dest/dist"
cp -a "$SRC/dist/src" "$dest/dist/src"
cp -a "$SRC/dist/bundle" "$dest/dist/bundle"
cp -a "$SRC/bin" "$dest/bin"
cp -a "$SRC/docs" "$dest/docs"
cp "$SRC/package.json" "$SRC/package-lock.json" "$SRC/README.md" "$dest/"

# Production dependencies only. A nested package is skipped when its parent's copy brought it.
mapfile -t pkgs < <(cd "$SRC" && npm ls --omit=dev --parseable --all 2>/dev/null | tail -n +2)
[ "${#pkgs[@]}" -gt 0 ] || { echo "install: npm ls lists no production packages (run make node-deps)" >&2; exit 1; }
for p in "${pkgs[@]}"; do
  rel=${p#"$SRC"/}
  [ -e "$dest/$rel" ] && continue
  mkdir -p "$dest/$(dirname "$rel")"
  cp -a "$p" "$dest/$rel"
done

# The entry points run with the Node they were built for (native modules are ABI-specific), so
# the service does not depend on which node its PATH finds.
for f in "$dest"/bin/*.js; do
  sed -i "1s# node\( \|\$\)# $NODE\1#" "$f"
  chmod 0755 "$f"
done

mkdir -p "$DESTDIR/usr/local/bin"
ln -sfn "$PREFIX/bin/berthd.js" "$DESTDIR/usr/local/bin/berthd"
ln -sfn "$PREFIX/bin/berth.js" "$DESTDIR/usr/local/bin/berth"

mkdir -p "$DESTDIR/etc/systemd/system"
sed "s|/opt/berth|$PREFIX|g" "$SRC/contrib/berth.service" >"$DESTDIR/etc/systemd/system/berth.service"
chmod 0644 "$DESTDIR/etc/systemd/system/berth.service"

conf="$DESTDIR/etc/berth/config.toml"
if [ -e "$conf" ]; then
  echo "keeping the existing $conf (compare with: berthd config default)"
else
  mkdir -p "$DESTDIR/etc/berth"
  "$dest/bin/berthd.js" config default >"$conf.tmp"
  chmod 0644 "$conf.tmp"
  mv "$conf.tmp" "$conf"
  echo "wrote the default configuration to $conf"
fi

comp="$DESTDIR/usr/share/bash-completion/completions"
mkdir -p "$comp"
"$dest/bin/berth.js" completion bash >"$comp/berth"
chmod 0644 "$comp/berth"
echo "installed: $PREFIX, /usr/local/bin/{berthd,berth}, /etc/systemd/system/berth.service${DESTDIR:+ (under $DESTDIR)}"
