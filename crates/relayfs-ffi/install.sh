#!/bin/sh
# Installs the C library built by cargo: librelayfs.so.VERSION with its
# soname link librelayfs.so.0 and the link librelayfs.so, librelayfs.a,
# include/relayfs.h and lib/pkgconfig/relayfs.pc.
#
#   cargo build --release -p relayfs-ffi
#   sh crates/relayfs-ffi/install.sh /usr/local [target/release]
#
# DESTDIR is honoured, as by make install. cargo-c users get the same from
# `cargo cinstall --release -p relayfs-ffi --prefix=/usr/local`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prefix=${1:?usage: install.sh PREFIX [CARGO_PROFILE_DIR]}
built=${2:-$here/../../target/release}
libdir=${LIBDIR:-$prefix/lib}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../../Cargo.toml" | head -n 1)
dest=${DESTDIR:-}

for f in librelayfs_ffi.so librelayfs_ffi.a; do
    if [ ! -f "$built/$f" ]; then
        echo "install.sh: $built/$f not found: cargo build --release -p relayfs-ffi first" >&2
        exit 1
    fi
done
mkdir -p "$dest$libdir/pkgconfig" "$dest$prefix/include"
install -m 0755 "$built/librelayfs_ffi.so" "$dest$libdir/librelayfs.so.$version"
ln -sf "librelayfs.so.$version" "$dest$libdir/librelayfs.so.0"
ln -sf "librelayfs.so.0" "$dest$libdir/librelayfs.so"
install -m 0644 "$built/librelayfs_ffi.a" "$dest$libdir/librelayfs.a"
install -m 0644 "$here/include/relayfs.h" "$dest$prefix/include/relayfs.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@LIBDIR@|$libdir|" -e "s|@VERSION@|$version|" \
    "$here/relayfs.pc.in" > "$dest$libdir/pkgconfig/relayfs.pc"
echo "installed librelayfs $version under $dest$prefix"
