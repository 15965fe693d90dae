#!/usr/bin/env bash
# install-deps.sh: installs the Debian packages realnvp needs to build, test and serve.
# Leaves out optional tools (python3-torch for benchmarks); --train adds Open MPI (data-parallel bin/realnvp-train,
# not needed to serve); --ci adds that, CI's fuzzing tools (clang, libFuzzer) and python3-yaml (make deploy-check);
# --web installs only what make test-web needs (chromium, nodejs, npm).
set -eu
PKGS="build-essential pkg-config libopenblas-dev libpng-dev zlib1g-dev libjansson-dev check libmicrohttpd-dev python3 python3-numpy curl help2man"   # curl: clients/curl/ and their test; help2man: make install's man pages
TRAIN_PKGS="libopenmpi-dev openmpi-bin"   # mpirun -np N bin/realnvp-train (make finds mpicc and builds it with MPI)
CI_PKGS="clang libclang-rt-14-dev python3-yaml man-db python3-torch $TRAIN_PKGS"   # make fuzz: clang -fsanitize=fuzzer (Debian 12's clang is 14); make deploy-check; man: make install-check; python3-torch: tests/test_torch_twin.sh (python/realnvp_torch)
WEB_PKGS="chromium nodejs npm"   # make test-web: the browser demo's test (playwright-core from npm drives Debian's chromium)
case "${1:-}" in
  --ci) PKGS="$PKGS $CI_PKGS" ;;
  --web) PKGS="$WEB_PKGS" ;;
  --train) PKGS="$PKGS $TRAIN_PKGS" ;;
esac
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install-deps: installing Debian packages:$missing"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
