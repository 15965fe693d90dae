#!/usr/bin/env bash
# install-check.sh: installs realnvp into a temporary prefix and uses it as a C programmer would:
# examples/ built with pkg-config (shared, then static) runs on the bundled model; the shared
# library exports only the rnvp_ API; `man realnvp-server` renders. Leaves out system-wide
# installs (make install PREFIX=/usr/local does that) and the programs' own tests (make test).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
fail() { echo "install-check: FAIL: $*" >&2; exit 1; }

make -s install PREFIX="$prefix" >/dev/null
for f in bin/realnvp bin/realnvp-server bin/realnvp-train include/realnvp.h lib/librealnvp.a lib/librealnvp.so \
         lib/pkgconfig/realnvp.pc share/man/man1/realnvp.1 share/man/man1/realnvp-server.1 share/man/man1/realnvp-train.1; do
    [ -e "$prefix/$f" ] || fail "$f was not installed"
done
soname=$(readelf -d "$prefix/lib/librealnvp.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = "librealnvp.so.0" ] || fail "soname is '$soname', expected librealnvp.so.0"

# only the public API is exported, and every exported name is declared in the header
exported=$(nm -D --defined-only "$prefix/lib/librealnvp.so" | awk '$2 != "A" {sub(/@.*/, "", $3); print $3}')
other=$(printf '%s\n' "$exported" | grep -v '^rnvp_' || true)
[ -z "$other" ] || fail "librealnvp.so exports symbols outside the rnvp_ API: $(echo $other | head -c 300)"
for s in $exported; do grep -q "\b$s(" include/realnvp.h || fail "$s is exported but not declared in realnvp.h"; done
echo "install-check: librealnvp.so ($soname) exports $(printf '%s\n' "$exported" | wc -l) rnvp_ functions and nothing else"

# the example, built through pkg-config as docs say, against the shared library
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
[ "$(pkg-config --modversion realnvp)" = "$(sed -n 's/^#define RNVP_VERSION "\(.*\)"/\1/p' include/realnvp.h)" ] ||
    fail "pkg-config --modversion realnvp: $(pkg-config --modversion realnvp)"
cc -O2 -Wall -Wextra -Werror examples/score_and_sample.c $(pkg-config --cflags realnvp) -o "$tmp/ex_shared" $(pkg-config --libs realnvp)
readelf -d "$tmp/ex_shared" | grep -q 'NEEDED.*librealnvp.so.0' || fail "the example does not link librealnvp.so.0"
model=models/fashion-mnist/model.safetensors
"$prefix/bin/realnvp" sample --model "$model" -n 1 --seed 7 -o "$tmp/one.png" >/dev/null
LD_LIBRARY_PATH=$prefix/lib "$tmp/ex_shared" "$model" "$tmp/one.png" "$tmp/grid.png" | tee "$tmp/out_shared.txt"
grep -q 'bits/dim' "$tmp/out_shared.txt" && [ -s "$tmp/grid.png" ] || fail "the example did not score and sample"
# the same log-likelihood as the installed CLI (both print it to 6 decimals here)
want=$("$prefix/bin/realnvp" log-prob --json --model "$model" "$tmp/one.png" | sed -n 's/.*"log_prob": \([-0-9.]*\).*/\1/p')
got=$(sed -n 's/.*log_prob \([-0-9.]*\) nats.*/\1/p' "$tmp/out_shared.txt")
[ "$(printf '%.6f' "$want")" = "$got" ] || fail "the example's log_prob $got differs from realnvp log-prob's $want"

# and against the static library (pkg-config --static adds the private dependencies)
cc -O2 examples/score_and_sample.c $(pkg-config --cflags realnvp) -o "$tmp/ex_static" \
    -L"$prefix/lib" -Wl,-Bstatic -lrealnvp -Wl,-Bdynamic $(pkg-config --static --libs-only-l realnvp | sed 's/-lrealnvp//')
readelf -d "$tmp/ex_static" | grep -q 'librealnvp' && fail "the static build still needs librealnvp.so"
"$tmp/ex_static" "$model" "$tmp/one.png" "$tmp/grid2.png" > "$tmp/out_static.txt"
cmp -s <(head -n 1 "$tmp/out_shared.txt") <(head -n 1 "$tmp/out_static.txt") || fail "static and shared builds disagree"
cmp -s "$tmp/grid.png" "$tmp/grid2.png" || fail "static and shared builds drew different samples"

# man pages
if command -v man >/dev/null; then
    MANPATH=$prefix/share/man man -P cat realnvp-server 2>/dev/null | grep -q -- '--drain-timeout-s' ||
        fail "man realnvp-server does not show the options"
    echo "install-check: man realnvp-server renders ($(MANPATH=$prefix/share/man man -P cat realnvp-server 2>/dev/null | wc -l) lines)"
else
    grep -q '^\.TH' "$prefix/share/man/man1/realnvp-server.1" || fail "realnvp-server.1 is not a man page"
    echo "install-check: man is not installed; realnvp-server.1 checked as a file"
fi
make -s uninstall PREFIX="$prefix"
left=$(find "$prefix" -type f | head -5)
[ -z "$left" ] || fail "make uninstall left: $left"
echo "install-check: PASS (install, pkg-config, shared and static example, exports, man pages, uninstall)"
