#!/usr/bin/env bash
# A working Docker engine and the local base image the docker tests build FROM.
#
#   1. Debian's docker.io and debootstrap, when missing (apt-get; root only);
#   2. dockerd, when `docker info` fails: started with setsid (no systemd here), its pid
#      written to $FITDOCK_DOCKERD_PIDFILE, ready when `docker info` answers;
#   3. the base image $FITDOCK_BASE_IMAGE (local/debian:bookworm), when missing:
#      `debootstrap --variant=minbase bookworm` into a temporary directory, then
#      `tar -C dir -c . | docker import -`. No registry is needed (none is reachable here).
#
# Idempotent: a second run finds everything in place and does nothing. A dockerd that is
# already running (or starting) is used as it is, never restarted. Stop the one this script
# started with: kill "$(cat /var/run/fitdock-dockerd.pid)".
#
# Environment knobs:
#   FITDOCK_BASE_IMAGE      tag of the imported base (default: local/debian:bookworm)
#   FITDOCK_DEBIAN_SUITE    suite debootstrap installs (default: bookworm)
#   FITDOCK_DEBIAN_MIRROR   mirror debootstrap uses (default: http://deb.debian.org/debian)
#   FITDOCK_DOCKERD_PIDFILE pid file of the dockerd started here
#                           (default: /var/run/fitdock-dockerd.pid)
#   FITDOCK_DOCKERD_LOG     its log (default: /var/log/dockerd.log)
set -euo pipefail

BASE_IMAGE=${FITDOCK_BASE_IMAGE:-local/debian:bookworm}
SUITE=${FITDOCK_DEBIAN_SUITE:-bookworm}
MIRROR=${FITDOCK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PIDFILE=${FITDOCK_DOCKERD_PIDFILE:-/var/run/fitdock-dockerd.pid}
DOCKERD_LOG=${FITDOCK_DOCKERD_LOG:-/var/log/dockerd.log}

T0=$(date +%s.%N)
T_STEP=$T0

# Print the time of the step just finished and the running total.
step_done() {
    local now
    now=$(date +%s.%N)
    awk -v what="$1" -v a="$T_STEP" -v b="$now" -v t0="$T0" \
        'BEGIN { printf "install-docker: %-48s %6.1f s  (total %6.1f s)\n", what, b - a, b - t0 }'
    T_STEP=$now
}

die() {
    echo "install-docker: $*" >&2
    exit 1
}

is_root() {
    [[ $(id -u) == 0 ]]
}

engine_up() {
    docker info >/dev/null 2>&1
}

# 1. Packages ---------------------------------------------------------------------------
install_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
    if ((${#missing[@]} == 0)); then
        step_done "packages: already installed"
        return
    fi
    if engine_up && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        step_done "packages: engine and base image present"
        return
    fi
    is_root && command -v apt-get >/dev/null ||
        die "missing ${missing[*]}: install them as root with apt-get (or your package manager)"
    export DEBIAN_FRONTEND=noninteractive
    # No systemd: keep the packages' init scripts from starting a dockerd of their own.
    local policy=/usr/sbin/policy-rc.d made_policy=0 status=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >/dev/null; } || status=$?
    ((made_policy == 0)) || rm -f "$policy"
    ((status == 0)) || exit "$status"
    step_done "apt-get install ${missing[*]}"
}

# 2. dockerd ----------------------------------------------------------------------------
wait_for_engine() {
    local seconds=$1 i
    for ((i = 0; i < seconds * 10; i++)); do
        engine_up && return 0
        sleep 0.1
    done
    return 1
}

start_dockerd() {
    if engine_up; then
        step_done "dockerd: already running"
        return
    fi
    # One that is starting (ours from an earlier run, or someone else's): wait for it.
    if pgrep -x dockerd >/dev/null; then
        wait_for_engine 30 || die "a dockerd is running but \`docker info\` fails; see its log"
        step_done "dockerd: waited for the running one"
        return
    fi
    is_root || die "no Docker engine and not root: start dockerd (or ask an admin to)"
    command -v dockerd >/dev/null || die "dockerd is not installed"
    mkdir -p "$(dirname "$DOCKERD_LOG")" "$(dirname "$PIDFILE")"
    setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    if ! wait_for_engine 60; then
        tail -n 20 "$DOCKERD_LOG" >&2 || true
        die "dockerd (pid $(cat "$PIDFILE")) did not answer within 60 s; log: $DOCKERD_LOG"
    fi
    step_done "dockerd: started (pid $(cat "$PIDFILE"), log $DOCKERD_LOG)"
}

# 3. Base image -------------------------------------------------------------------------
import_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        step_done "base image $BASE_IMAGE: present"
        return
    fi
    is_root || die "building $BASE_IMAGE needs root (debootstrap)"
    local rootfs
    rootfs=$(mktemp -d /tmp/fitdock-rootfs.XXXXXX)
    # shellcheck disable=SC2064  # expand now: the trap must remove this directory
    trap "rm -rf '$rootfs'" EXIT
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >/tmp/fitdock-debootstrap.log 2>&1 ||
        {
            tail -n 20 /tmp/fitdock-debootstrap.log >&2
            die "debootstrap failed; log: /tmp/fitdock-debootstrap.log"
        }
    rm -f /tmp/fitdock-debootstrap.log
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    step_done "debootstrap --variant=minbase $SUITE ($(du -sm "$rootfs" | cut -f1) MB)"
    # The same PATH and CMD as debian:bookworm-slim, so Dockerfiles treat both alike.
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    step_done "docker import $BASE_IMAGE"
    rm -rf "$rootfs"
    trap - EXIT
}

install_packages
start_dockerd
import_base_image
step_done "done: $(docker version --format 'engine {{.Server.Version}}, API {{.Server.APIVersion}}')"
