#!/usr/bin/env bash
# fresh-check.sh: proves the README's two commands and the Docker image on fresh Debian 12 roots
# (debootstrap, minbase): (1) a newcomer with only git, make and gcc clones the repo, runs
# `make run` until /healthz answers, stops it with Ctrl-C (SIGINT to its process group), runs
# `make test`; (2) the two stages of deploy/Dockerfile the server image needs (build, runtime) are
# built in two more fresh roots (deploy/dockerfile-run.py skips the trainer's stages, as BuildKit
# does without --target train) and the "container" is started
# with the image's ENTRYPOINT/ENV/USER as PID 1 of its own PID and network namespaces, probed,
# health-checked with the image's HEALTHCHECK and stopped with SIGTERM while a request is in flight.
# Leaves out a real Docker engine and Kubernetes (deploy/check-manifests.py checks their files).
#
#   sudo deploy/fresh-check.sh [--ref REV] [--only newcomer|docker] [--stand-in-model FILE] [--keep]
#
#   --ref REV              commit to check (default HEAD): a clean clone, never the working tree
#   --stand-in-model FILE  copy FILE to models/fashion-mnist/model.safetensors when the clone has
#                          none (only for trying the script before a model is committed; reported)
#   --only PART            run only the newcomer part or only the docker part
#   --keep                 keep the roots afterwards (default: deleted at the end)
# Environment: RNVP_FRESH_ROOT (default /var/tmp/rnvp-fresh, must be outside the repository),
# RNVP_FRESH_CACHE (debootstrap tarball of downloaded .debs, made on first use; every root is still
# installed from scratch), RNVP_MIRROR (default http://deb.debian.org/debian).
# Needs root, debootstrap, git, unshare, chroot, curl, ip, python3 on the host; the newcomer part
# serves on the host's 127.0.0.1:8080 (must be free); the container gets its own loopback.
set -euo pipefail

REPO=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
FRESH=${RNVP_FRESH_ROOT:-/var/tmp/rnvp-fresh}
CACHE=${RNVP_FRESH_CACHE:-/var/tmp/rnvp-cache/bookworm-minbase.tgz}
MIRROR=${RNVP_MIRROR:-http://deb.debian.org/debian}
REF=HEAD STANDIN="" ONLY="" KEEP=0
PATH_IN="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

die() { echo "fresh-check: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --ref) REF=${2:?--ref needs a revision}; shift 2 ;;
        --stand-in-model) STANDIN=$(realpath "${2:?--stand-in-model needs a file}"); shift 2 ;;
        --only) ONLY=${2:?--only needs newcomer or docker}; shift 2
                [ "$ONLY" = newcomer ] || [ "$ONLY" = docker ] || die "--only newcomer or --only docker" ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot, namespaces): sudo $0"
for t in debootstrap git unshare chroot curl ip findmnt; do
    command -v $t >/dev/null || die "$t not found (apt-get install debootstrap curl iproute2 util-linux git)"
done
PY=/usr/bin/python3; [ -x $PY ] || PY=python3
mkdir -p "$FRESH"
FRESH=$(realpath "$FRESH")
case "$FRESH/" in "$REPO"/*) die "RNVP_FRESH_ROOT ($FRESH) must be outside the repository ($REPO)" ;; esac
[ -z "$STANDIN" ] || [ -f "$STANDIN" ] || die "--stand-in-model: $STANDIN not found"
SHA=$(git -C "$REPO" rev-parse --verify "$REF^{commit}") || die "--ref $REF: no such commit"

T0=$(date +%s)
RESULTS=()
FAILED=0
stamp() { printf '[fresh-check %4ds] ' $(( $(date +%s) - T0 )); }
say() { stamp; echo "$*"; }
pass() { RESULTS+=("PASS $*"); say "PASS $*"; }
fail() { RESULTS+=("FAIL $*"); say "FAIL $*"; FAILED=1; }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }

# remove_root DIR: refuses while anything is mounted below DIR (a namespace still alive)
remove_root() {
    [ -e "$1" ] || return 0
    if findmnt -rn -o TARGET | grep -q "^$1\(/\|$\)"; then die "$1 still has mounts; not deleting it"; fi
    rm -rf --one-file-system "$1"
}

# make_root DIR: a fresh Debian 12 minbase root (downloads cached in $CACHE, installed anew)
make_root() {
    local t=$(date +%s)
    remove_root "$1"
    if [ ! -f "$CACHE" ]; then
        say "debootstrap: downloading bookworm minbase into $CACHE (once)"
        mkdir -p "$(dirname "$CACHE")"; remove_root "$FRESH/tarball-work"
        debootstrap --variant=minbase --make-tarball="$CACHE" bookworm "$FRESH/tarball-work" "$MIRROR" >"$FRESH/logs/debootstrap-download.log" 2>&1 \
            || die "debootstrap --make-tarball failed (see $FRESH/logs/debootstrap-download.log)"
        remove_root "$FRESH/tarball-work"
    fi
    debootstrap --variant=minbase --unpack-tarball="$CACHE" bookworm "$1" "$MIRROR" >"$FRESH/logs/debootstrap-$(basename "$1").log" 2>&1 \
        || die "debootstrap into $1 failed (see $FRESH/logs/debootstrap-$(basename "$1").log)"
    cp /etc/resolv.conf "$1/etc/resolv.conf"
    say "fresh Debian $(cat "$1/etc/debian_version") root $1 in $(( $(date +%s) - t )) s ($(du -sxm "$1" | cut -f1) MB)"
}

# docker_base DIR [slim]: the settings Docker's debian:bookworm(-slim) images add to a debootstrap
# root (debuerreotype): unsafe-io dpkg, no apt translations or caches; slim also drops docs, man
# pages and locales, and keeps them out of later installs
docker_base() {
    echo force-unsafe-io > "$1/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
    printf '%s\n' 'Acquire::Languages "none";' > "$1/etc/apt/apt.conf.d/docker-no-languages"
    printf '%s\n' 'Acquire::GzipIndexes "true";' > "$1/etc/apt/apt.conf.d/docker-gzip-indexes"
    printf '%s\n' 'Apt::AutoRemove::SuggestsImportant "false";' > "$1/etc/apt/apt.conf.d/docker-autoremove-suggests"
    printf '%s\n' 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
        'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' > "$1/etc/apt/apt.conf.d/docker-clean"
    rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin
    if [ "${2:-}" = slim ]; then
        printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' 'path-exclude /usr/share/man/*' \
            'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/lintian/*' \
            'path-exclude /usr/share/linda/*' 'path-exclude /usr/share/locale/*' > "$1/etc/dpkg/dpkg.cfg.d/docker"
        find "$1/usr/share/doc" -mindepth 2 -not -name copyright -not -type d -delete 2>/dev/null || true
        rm -rf "$1"/usr/share/man/* "$1"/usr/share/groff/* "$1"/usr/share/info/* "$1"/usr/share/lintian/* "$1"/usr/share/locale/*
    fi
}

# in_root DIR SCRIPT: runs bash SCRIPT as root in DIR, in private mount + PID namespaces with /proc,
# /sys and /dev (so every process it leaves behind dies with it), with an empty environment
in_root() {
    unshare --mount --pid --fork --propagation private bash -c '
        set -e; r=$1; shift
        mount -t proc proc "$r/proc"; mount -t sysfs sysfs "$r/sys"; mount --rbind /dev "$r/dev"
        exec chroot "$r" "$@"' _ "$1" /usr/bin/env -i PATH="$PATH_IN" HOME=/root LANG=C.UTF-8 TERM=dumb bash -c "$2"
}

# clean_clone DEST: a clone of $SHA (plus the stand-in model when asked and the commit has none)
clean_clone() {
    git clone -q --no-local --no-checkout "$REPO" "$1" && git -C "$1" checkout -q "$SHA"
    add_standin "$1"
}
add_standin() {
    local m="$1/models/fashion-mnist/model.safetensors"
    if [ ! -f "$m" ]; then
        if [ -n "$STANDIN" ]; then
            mkdir -p "$(dirname "$m")"; cp "$STANDIN" "$m"
            say "NOTE: commit ${SHA:0:10} has no models/fashion-mnist/model.safetensors; using the STAND-IN $STANDIN"
            RESULTS+=("NOTE stand-in model used (commit has no models/fashion-mnist/model.safetensors)")
        else
            say "NOTE: commit ${SHA:0:10} has no models/fashion-mnist/model.safetensors (make run and the image need it)"
        fi
    fi
}

mkdir -p "$FRESH/logs"
rm -f "$FRESH"/logs/*
say "checking commit $SHA ($(git -C "$REPO" log -1 --format=%s "$SHA" | cut -c1-70)) in $FRESH"
say "host: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- 1. newcomer: make run, make test
newcomer() {
    local R=$FRESH/newcomer
    say "== part 1: a newcomer on a fresh Debian 12 with git, make and gcc"
    if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then
        fail "newcomer: 127.0.0.1:8080 is already in use on this host; stop that server first"; return
    fi
    make_root "$R"
    git clone -q --bare --no-local "$REPO" "$R/srv/realnvp.git"
    [ -z "$STANDIN" ] || cp "$STANDIN" "$R/srv/stand-in.safetensors"
    local t=$(date +%s) rc
    set +e
    in_root "$R" '
        set -u
        ts() { echo $(( $(date +%s) - T0 )); }; T0=$(date +%s)
        echo "newcomer: apt-get install git make gcc (the starting point: a machine with only these)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git make gcc; } >/root/apt-start.log 2>&1 \
            || { echo "newcomer: FAIL could not install git make gcc"; tail -5 /root/apt-start.log; exit 10; }
        echo "newcomer: installed in $(ts) s: $(gcc --version | head -1); $(make --version | head -1); $(git --version)"
        cd /root && git clone -q /srv/realnvp.git realnvp && cd realnvp && git checkout -q '"$SHA"' || exit 11
        if [ ! -f models/fashion-mnist/model.safetensors ] && [ -f /srv/stand-in.safetensors ]; then
            mkdir -p models/fashion-mnist && cp /srv/stand-in.safetensors models/fashion-mnist/model.safetensors
            echo "newcomer: NOTE the commit has no model; copied the STAND-IN model in"
        fi
        CR=$(printf "\r")
        get() { # get PATH: prints the status line, then the body (HTTP/1.0, bash only: no curl here)
            exec 3<>/dev/tcp/127.0.0.1/8080 || return 1
            printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$1" >&3
            local line; IFS= read -r -t 10 line <&3 || { exec 3<&-; return 1; }; echo "${line%$CR}"
            while IFS= read -r -t 10 line <&3 && [ "${line%$CR}" != "" ]; do :; done
            cat <&3; exec 3<&-
        }
        echo "newcomer: \$ make run   (in the background; waiting for /healthz)"
        t1=$(date +%s)
        setsid make run >/root/make-run.log 2>&1 &
        MPID=$!
        up=0
        for i in $(seq 1 3600); do
            if st=$(get /healthz 2>/dev/null | head -1) && [[ $st == *" 200"* ]]; then up=1; break; fi
            kill -0 $MPID 2>/dev/null || break
            sleep 1
        done
        if [ $up = 0 ]; then echo "newcomer: FAIL make run did not serve /healthz (exit or timeout); its log ends:"; tail -25 /root/make-run.log; exit 12; fi
        echo "newcomer: PASS /healthz answered 200, $(( $(date +%s) - t1 )) s after make run started"
        grep -m1 "^install-deps" /root/make-run.log | sed "s/^/newcomer: make run printed: /"
        grep -m1 "listening on" /root/make-run.log | sed "s/^/newcomer: make run printed: /"
        echo "newcomer: GET /readyz -> $(get /readyz | tr -d "\n" | cut -c1-160)"
        echo "newcomer: GET /info -> $(get /info | tr -d "\n" | cut -c1-200)..."
        echo "newcomer: GET /sample?n=4 -> $(get "/sample?n=4&temp=0.7&seed=1" | head -1) ($(get "/sample?n=4&temp=0.7&seed=1" | wc -c) bytes with the status line)"
        SPID=""
        for p in /proc/[0-9]*; do [ "$(readlink $p/exe 2>/dev/null)" = /root/realnvp/bin/realnvp-server ] && SPID=${p#/proc/}; done
        [ -n "$SPID" ] || { echo "newcomer: FAIL found no realnvp-server process under make run"; exit 13; }
        # Ctrl-C: SIGINT to the foreground process group (make and the server). Not SIGTERM to the
        # group: make forwards SIGTERM to its child, and the server dies on a second signal while draining
        echo "newcomer: kill -INT -- -$MPID   (Ctrl-C: SIGINT to make run'"'"'s process group, make and the server $SPID)"
        kill -INT -- -$MPID
        for i in $(seq 1 60); do kill -0 $SPID 2>/dev/null || break; sleep 1; done
        wait $MPID; mrc=$?
        if [ -n "$SPID" ] && kill -0 $SPID 2>/dev/null; then echo "newcomer: FAIL the server is still running 60 s after Ctrl-C"; exit 13; fi
        if grep -q "stopped cleanly" /root/make-run.log; then echo "newcomer: PASS the server drained and exited after Ctrl-C (make exit $mrc):"
        else echo "newcomer: FAIL no \"stopped cleanly\" in the server log"; fi
        tail -3 /root/make-run.log | sed "s/^/newcomer:   /"
        grep -q "stopped cleanly" /root/make-run.log || exit 14
        echo "newcomer: \$ make test"
        t2=$(date +%s)
        make test >/root/make-test.log 2>&1; trc=$?
        echo "newcomer: make test exit $trc in $(( $(date +%s) - t2 )) s; it printed at the end:"
        grep -E "^[0-9]+%: Checks|^test programs:" /root/make-test.log | sed "s/^/newcomer:   /"
        [ $trc = 0 ] || { echo "newcomer: FAIL make test; its log ends:"; tail -30 /root/make-test.log; exit 15; }
        echo "newcomer: PASS make test"
    ' 2>&1 | tee "$FRESH/logs/newcomer.out" | while IFS= read -r l; do stamp; echo "$l"; done
    rc=${PIPESTATUS[0]}; set -e
    cp "$R"/root/make-run.log "$R"/root/make-test.log "$R"/root/apt-start.log "$FRESH/logs/" 2>/dev/null || true
    check "newcomer: make run served /healthz, stopped cleanly on Ctrl-C; make test passed (exit $rc, $(( $(date +%s) - t )) s)" [ "$rc" = 0 ]
    [ $KEEP = 1 ] || remove_root "$R"
}

# ---------------------------------------------------------------- 2. the Dockerfile, without Docker
docker_part() {
    say "== part 2: deploy/Dockerfile's build and runtime stages in fresh roots, then the container's settings"
    local B=$FRESH/stage-build Rt=$FRESH/stage-runtime C=$FRESH/context
    local t rc base_mb=?
    if [ "${RNVP_FRESH_REUSE_IMAGE:-0}" = 1 ] && [ -f "$FRESH/image.sh" ] && [ -d "$Rt" ] && [ -d "$C" ]; then
        say "NOTE: RNVP_FRESH_REUSE_IMAGE=1: reusing the roots built by an earlier --keep run (development only)"
    else
        make_root "$B"; docker_base "$B"
        make_root "$Rt"; docker_base "$Rt" slim
        base_mb=$(du -sxm "$Rt" | cut -f1)
        remove_root "$C"; clean_clone "$C"
        t=$(date +%s)
        check "manifests: deploy/check-manifests.py --self-test (on the clone)" \
            bash -c "$PY '$C/deploy/check-manifests.py' --self-test >'$FRESH/logs/check-manifests.out' 2>&1"
        grep "^check-manifests:" "$FRESH/logs/check-manifests.out" | while IFS= read -r l; do say "$l"; done
        set +e
        $PY "$C/deploy/dockerfile-run.py" --context "$C" --dockerfile "$C/deploy/Dockerfile" --root "$B" --root "$Rt" \
            --settings "$FRESH/image.sh" 2>&1 | tee "$FRESH/logs/docker-build.out" | while IFS= read -r l; do stamp; echo "$l"; done
        rc=${PIPESTATUS[0]}; set -e
        if [ "$rc" != 0 ]; then
            fail "docker: the Dockerfile's build failed (see $FRESH/logs/docker-build.out)"; return
    fi
    pass "docker: every RUN/COPY of the build and runtime stages succeeded in fresh roots ($(( $(date +%s) - t )) s)"
    fi
    # shellcheck disable=SC1091
    source "$FRESH/image.sh"
    say "image: runtime root $(du -sxm "$Rt" | cut -f1) MB (slim-like minbase $base_mb MB + the Dockerfile's steps); user $IMG_USER; cmd ${IMG_CMD[*]}; expose $IMG_EXPOSE"
    say "image: the server's shared libraries in the runtime root: $(chroot "$Rt" /usr/bin/ldd /usr/local/bin/realnvp-server | awk '{printf "%s ", $1}')"
    if chroot "$Rt" /usr/bin/ldd /usr/local/bin/realnvp-server | grep -q "not found"; then fail "docker: a shared library is missing at run time"; fi
    check "docker: no -dev packages or compiler in the runtime root" \
        bash -c "! chroot '$Rt' dpkg-query -W -f='\${Package}\n' | grep -E -- '-dev$|^gcc(-[0-9]+)?$|^cpp|^make$'"
    if [ -z "${IMG_HEALTHCHECK[*]}" ]; then fail "docker: the image has no HEALTHCHECK"; fi

    # the container: own network namespace (loopback only, so 0.0.0.0 is not exposed on the host),
    # read-only root, tmpfs /tmp, the server as PID 1 of its own PID namespace, as IMG_USER
    export IMG_ROOT IMG_USER IMG_WORKDIR IMG_HC_START_PERIOD IMG_HC_TIMEOUT FRESH
    local envq cmdq hcq
    envq=$(printf '%q ' "${IMG_ENV[@]}"); cmdq=$(printf '%q ' "${IMG_CMD[@]}"); hcq=$(printf '%q ' "${IMG_HEALTHCHECK[@]}")
    set +e
    unshare --net --mount --fork --propagation private bash -c '
        set -u
        R=$IMG_ROOT; L=$FRESH/logs/container.log
        IMG_ENV=('"$envq"'); IMG_CMD=('"$cmdq"'); IMG_HC=('"$hcq"')
        ip link set lo up
        mount --bind "$R" "$R" && mount -o remount,bind,ro "$R"
        mount --rbind /dev "$R/dev"; mount -t tmpfs -o size=16m tmpfs "$R/tmp"
        hc() { timeout "$IMG_HC_TIMEOUT" chroot --userspec="$IMG_USER" "$R" /usr/bin/env -i "${IMG_ENV[@]}" "${IMG_HC[@]}"; }
        echo "container: starting ${IMG_CMD[*]} as $IMG_USER, env: ${IMG_ENV[*]}"
        ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
        t1=$(date +%s%N)
        unshare --pid --fork --mount-proc="$R/proc" chroot --userspec="$IMG_USER" "$R" \
            /usr/bin/env -i -C "$IMG_WORKDIR" "${IMG_ENV[@]}" "${IMG_CMD[@]}" >"$L" 2>&1 &
        U=$!
        ok=0
        for i in $(seq 1 $(( ${IMG_HC_START_PERIOD%.*} + 30 ))); do
            if hc 2>/dev/null; then ok=1; break; fi
            kill -0 $U 2>/dev/null || break; sleep 1
        done
        S=$(cat /proc/$U/task/$U/children 2>/dev/null | tr -d " "); [ -n "$S" ] || S=$(pgrep -P $U | head -1)
        [ $ok = 1 ] && echo "container: PASS HEALTHCHECK (${IMG_HC[*]}) healthy $(ms $t1) ms after start" \
                    || { echo "container: FAIL HEALTHCHECK never succeeded; log:"; cat "$L"; exit 20; }
        echo "container: $(head -1 "$L")"
        nspid=$(awk "/^NSpid/{print \$NF}" /proc/$S/status); uid=$(awk "/^Uid/{print \$2}" /proc/$S/status)
        echo "container: server host pid $S is PID $nspid in its namespace, uid $uid; exe $(readlink /proc/$S/exe)"
        [ "$nspid" = 1 ] && [ "$uid" = "${IMG_USER%%:*}" ] || { echo "container: FAIL not PID 1 / not the image user"; exit 21; }
        u=http://127.0.0.1:8080
        fails=0
        probe() { # probe WHAT EXPECTED-CODE curl-args...
            local what=$1 want=$2; shift 2
            local out code; out=$(curl -s -m 20 -o /tmp/body.$$ -w "%{http_code} %{content_type} %{size_download}" "$@"); code=${out%% *}
            echo "container: $([ "$code" = "$want" ] && echo PASS || echo FAIL) $what -> $out: $(head -c 150 /tmp/body.$$ | tr -d "\n" | LC_ALL=C tr -c "[:print:]" ".")"
            [ "$code" = "$want" ] || fails=$((fails+1))
        }
        probe "GET /healthz" 200 $u/healthz
        probe "GET /readyz" 200 $u/readyz
        probe "GET /info" 200 $u/info
        probe "GET /sample?n=4 (PNG grid)" 200 -o /tmp/s.png "$u/sample?n=4&temp=0.7&seed=1"
        curl -s -m 20 -o /tmp/one.png "$u/sample?n=1&seed=3"
        probe "POST /log_prob (one PNG)" 200 -H "Content-Type: image/png" --data-binary @/tmp/one.png $u/log_prob
        probe "POST /log_prob (text/plain: 415)" 415 -H "Content-Type: text/plain" --data-binary hello $u/log_prob
        probe "GET /metrics" 200 $u/metrics
        grep -m1 "^realnvp_queue_depth" /tmp/body.$$ | sed "s/^/container:   /"
        echo "container: SIGTERM to PID 1 (as docker stop does) while GET /sample?n=256 is in flight"
        b0=$(curl -s -m 10 $u/metrics | awk -F"[ ]" "/^realnvp_batches_total\{op=\"sample\"\}/{print \$2}")
        curl -s -m 120 -o /tmp/big.out -w "%{http_code}" "$u/sample?n=256&temp=0.7&seed=2" >/tmp/big.code &
        C=$!
        for i in $(seq 1 400); do # until the server has the request: images queued or a sample batch done
            m=$(curl -s -m 10 $u/metrics)
            q=$(echo "$m" | awk "/^realnvp_queue_depth /{print \$2}")
            b=$(echo "$m" | awk -F"[ ]" "/^realnvp_batches_total\{op=\"sample\"\}/{print \$2}")
            [ "${q:-0}" -gt 0 ] || [ "${b:-0}" != "${b0:-0}" ] && break
            kill -0 $C 2>/dev/null || break; sleep 0.05
        done
        t2=$(date +%s%N)
        kill -0 $C 2>/dev/null && inflight=yes || inflight=no
        kill -TERM "$S"
        ready=$(curl -s -m 5 -o /dev/null -w "%{http_code}" $u/readyz)
        wait $C
        wait $U; rc=$?
        echo "container: request in flight at SIGTERM: $inflight (queue depth ${q:-?}); it finished with $(cat /tmp/big.code) ($(stat -c %s /tmp/big.out 2>/dev/null || echo 0) bytes); /readyz during draining: $ready (000: connection refused)"
        [ $inflight = yes ] || { echo "container: FAIL the request was not in flight at SIGTERM: draining not exercised"; fails=$((fails+1)); }
        echo "container: server exit status $rc, $(ms $t2) ms after SIGTERM; log ends:"
        tail -2 "$L" | sed "s/^/container:   /"
        [ "$(cat /tmp/big.code)" = 200 ] || { echo "container: FAIL the in-flight request was lost"; fails=$((fails+1)); }
        [ $rc = 0 ] && grep -q "stopped cleanly" "$L" || { echo "container: FAIL no clean exit"; fails=$((fails+1)); }
        if hc 2>/dev/null; then echo "container: FAIL HEALTHCHECK still passes with the server stopped"; fails=$((fails+1));
        else echo "container: PASS HEALTHCHECK fails once the server is gone (exit non-zero)"; fi
        rm -f /tmp/body.$$ /tmp/s.png /tmp/one.png /tmp/big.out /tmp/big.code
        exit $(( fails > 0 ? 22 : 0 ))
    ' 2>&1 | tee "$FRESH/logs/container.out" | while IFS= read -r l; do stamp; echo "$l"; done
    rc=${PIPESTATUS[0]}; set -e
    check "docker: container healthy, endpoints answer, SIGTERM drains an in-flight request and exits 0 (exit $rc)" [ "$rc" = 0 ]
    if [ $KEEP = 0 ]; then remove_root "$B"; remove_root "$Rt"; remove_root "$C"; fi
}

[ "$ONLY" = docker ] || newcomer
[ "$ONLY" = newcomer ] || docker_part
echo
echo "fresh-check summary (commit ${SHA:0:10}, $(( $(date +%s) - T0 )) s in all, logs in $FRESH/logs):"
printf '  %s\n' "${RESULTS[@]}"
exit $FAILED
