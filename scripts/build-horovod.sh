#!/usr/bin/env bash
# Build (once) and install Horovod into the venv, for PyTorch only, with the MPI and Gloo
# controllers, against Debian's Open MPI by default.
#
#   scripts/build-horovod.sh            # fast no-op when horovod.torch already works
#   scripts/build-horovod.sh --reinstall  # install again (from the wheel cache if there)
#   scripts/build-horovod.sh --rebuild    # build again even when a cached wheel exists
#
# Horovod 0.28.1 is an sdist only; a build takes 3.5-5 min on 2 cores. The wheel is kept in
# $FITDOCK_WHEEL_CACHE (default ~/.cache/fitdock/wheels), under a folder named after what
# it was built against (Horovod, torch, Python and MPI versions), so a later run on the
# same machine (or a CI cache of that folder) only installs it, in seconds.
#
# Environment knobs:
#   FITDOCK_VENV           venv to install into (default: <repo>/.venv)
#   FITDOCK_WHEEL_CACHE    wheel cache (default: ~/.cache/fitdock/wheels)
#   FITDOCK_HOROVOD_VERSION  Horovod version (default: 0.28.1)
#   FITDOCK_HOROVOD_MPI_BIN  folder holding the mpicxx and mpirun of the MPI to build
#                          against (default: /usr/bin, Debian's Open MPI; needs the
#                          openmpi-bin and libopenmpi-dev packages: scripts/install-system.sh)
#   FITDOCK_BUILD_JOBS     parallel compile jobs (default: nproc)
#
# Recipe (see shared RECIPES.md): CMAKE_CXX_STANDARD 14 -> 17 in CMakeLists.txt and
# horovod/torch/CMakeLists.txt (torch 2.x needs C++17); --no-build-isolation so the
# build sees the venv's torch; HOROVOD_WITH_PYTORCH/MPI/GLOO=1, WITHOUT_TENSORFLOW/MXNET=1.
# The MPI bin folder goes first on PATH during the build, so an activated venv's MPICH
# (mpicxx/mpirun from PyPI) is not picked up by CMake instead.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${FITDOCK_VENV:-$ROOT/.venv}
CACHE=${FITDOCK_WHEEL_CACHE:-$HOME/.cache/fitdock/wheels}
VERSION=${FITDOCK_HOROVOD_VERSION:-0.28.1}
MPI_BIN=${FITDOCK_HOROVOD_MPI_BIN:-/usr/bin}
JOBS=${FITDOCK_BUILD_JOBS:-$(nproc)}
# Bump when this script changes how the wheel is built, to leave old cached wheels alone.
RECIPE_VERSION=1
RUNTIME_DEPS=(cloudpickle psutil pyyaml packaging)

REINSTALL=0
REBUILD=0
for arg in "$@"; do
    case $arg in
        --reinstall) REINSTALL=1 ;;
        --rebuild) REINSTALL=1; REBUILD=1 ;;
        -h | --help) sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-horovod: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

T0=$(date +%s.%N)
T_STEP=$T0

# Print the time of the step just finished and the running total.
step_done() {
    local now
    now=$(date +%s.%N)
    awk -v what="$1" -v a="$T_STEP" -v b="$now" -v t0="$T0" \
        'BEGIN { printf "build-horovod: %-44s %6.1f s  (total %6.1f s)\n", what, b - a, b - t0 }'
    T_STEP=$now
}

die() {
    echo "build-horovod: $*" >&2
    exit 1
}

# True when the venv's horovod is $VERSION and horovod.torch loads with MPI and Gloo built.
horovod_ok() {
    "$VENV/bin/python" - "$VERSION" <<'EOF' >/dev/null 2>&1
import sys

import horovod
import horovod.torch as hvd

assert horovod.__version__ == sys.argv[1], horovod.__version__
assert hvd.mpi_built() and hvd.gloo_built()
EOF
}

# "openmpi-4.1.4" or "mpich-4.0.2": the MPI that $MPI_BIN/mpirun belongs to.
mpi_id() {
    local text
    text=$("$MPI_BIN/mpirun" --version 2>&1) || true
    if [[ $text =~ Open\ MPI\)?\ ([0-9][0-9A-Za-z.]*) ]]; then
        echo "openmpi-${BASH_REMATCH[1]}"
    elif [[ $text =~ Version:[[:space:]]*([0-9][0-9A-Za-z.]*) ]]; then
        echo "mpich-${BASH_REMATCH[1]}"
    else
        return 1
    fi
}

# Fail early, with the fix, when a build tool is missing.
check_build_tools() {
    local tool
    for tool in cmake g++ make; do
        command -v "$tool" >/dev/null || die "$tool not found: run scripts/install-system.sh"
    done
    [[ -x $MPI_BIN/mpicxx && -x $MPI_BIN/mpicc ]] ||
        die "no $MPI_BIN/mpicxx: install libopenmpi-dev (scripts/install-system.sh)" \
            "or set FITDOCK_HOROVOD_MPI_BIN to the bin folder of another MPI"
}

# Download the sdist into $1, unpack it and switch it to C++17; print the source folder.
fetch_source() {
    local work=$1 src
    "$VENV/bin/python" -m pip download --quiet --no-deps --no-binary :all: \
        -d "$work" "horovod==$VERSION" >&2
    tar -xzf "$work/horovod-$VERSION.tar.gz" -C "$work"
    src=$work/horovod-$VERSION
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
        "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
    if grep -q 'CMAKE_CXX_STANDARD 14' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"; then
        die "could not switch horovod $VERSION to C++17 (CMakeLists.txt changed?)"
    fi
    echo "$src"
}

# Build the wheel of source folder $1 into folder $2; the log goes to $2/build.log.
build_wheel() {
    local src=$1 out=$2
    if ! env PATH="$MPI_BIN:$PATH" MPI_HOME="$(dirname "$MPI_BIN")" \
        MAKEFLAGS="-j$JOBS" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
        HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
        HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
        "$VENV/bin/python" -m pip wheel --no-build-isolation --no-deps -v -w "$out" "$src" \
        >"$out/build.log" 2>&1; then
        tail -n 60 "$out/build.log" >&2
        cp "$out/build.log" "$CACHE/failed-build.log"
        die "the build failed; full log: $CACHE/failed-build.log"
    fi
}

[[ -x $VENV/bin/python ]] || die "no venv at $VENV: run scripts/setup-venv.sh first"
"$VENV/bin/python" -c 'import torch' 2>/dev/null || die "torch is not importable in $VENV"

if [[ $REINSTALL == 0 ]] && horovod_ok; then
    step_done "horovod $VERSION already works in $VENV"
    exit 0
fi
step_done "check $VENV"

[[ -x $MPI_BIN/mpirun ]] || die "no $MPI_BIN/mpirun: run scripts/install-system.sh"
MPI_ID=$(mpi_id) || die "cannot tell which MPI $MPI_BIN/mpirun is"
read -r TORCH_VERSION PY_TAG < <("$VENV/bin/python" -c \
    'import sys, torch; print(torch.__version__, "cp%d%d" % sys.version_info[:2])')
KEY="horovod-${VERSION}_torch-${TORCH_VERSION}_${PY_TAG}_${MPI_ID}_$(uname -m)_r${RECIPE_VERSION}"
SLOT=$CACHE/$KEY
echo "build-horovod: horovod $VERSION, torch $TORCH_VERSION, $PY_TAG, $MPI_ID ($MPI_BIN/mpirun)"

# Runtime dependencies of the wheel (the build imports packaging, too).
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${RUNTIME_DEPS[@]}"
step_done "runtime dependencies"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9  # one build per cache at a time; a waiting run then finds the wheel cached

wheel=$(compgen -G "$SLOT/horovod-$VERSION-*.whl" | head -n 1 || true)
if [[ $REBUILD == 1 || -z $wheel ]]; then
    check_build_tools
    WORK=$(mktemp -d "$CACHE/.build.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
    src=$(fetch_source "$WORK")
    step_done "download and patch the sdist"
    mkdir "$WORK/wheel"
    echo "build-horovod: building with $JOBS jobs (3.5-5 min on 2 cores); log: $WORK/wheel/build.log"
    build_wheel "$src" "$WORK/wheel"
    step_done "build the wheel"
    rm -rf "$SLOT"
    mv "$WORK/wheel" "$SLOT"  # same file system: the slot appears whole or not at all
    wheel=$(compgen -G "$SLOT/horovod-$VERSION-*.whl" | head -n 1)
    echo "build-horovod: cached $wheel"
else
    step_done "cached wheel $(basename "$wheel")"
fi

"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --force-reinstall "$wheel"
step_done "install into $VENV"

horovod_ok || die "horovod.torch does not import with MPI and Gloo after the install"
step_done "check: horovod.torch $VERSION imports, MPI and Gloo built"
echo "build-horovod: launch with $MPI_BIN/mpirun, or horovodrun with $MPI_BIN/mpirun first" \
    "on PATH as \`mpirun\` (not the venv's MPICH one), or horovodrun --gloo"
