#!/usr/bin/env bash
# System packages the test suite uses beside the Python ones: Debian's Open MPI (so the
# suite runs Open MPI as well as the MPICH that the `mpi` extra brings from PyPI).
# Installs with apt-get when run as root on Debian/Ubuntu; otherwise says what is missing
# and leaves it to you (the tests that need it then skip, or fail with CI=true).
set -euo pipefail

missing=()
if ! /usr/bin/mpirun --version 2>/dev/null | grep -q "Open MPI"; then
    missing+=(openmpi-bin)
fi
if ((${#missing[@]} == 0)); then
    echo "install-system: nothing to install"
    exit 0
fi
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "install-system: missing ${missing[*]}; install them with your package manager" >&2
    exit 0
fi
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
echo "install-system: installed ${missing[*]} in $(($(date +%s) - start)) s"
