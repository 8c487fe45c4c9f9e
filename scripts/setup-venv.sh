#!/usr/bin/env bash
# Create (or reuse) .venv in the repository root and install fitdock into it,
# editable, with the extras used in development: all, test and bench.
#
#   scripts/setup-venv.sh            # create/refresh .venv; fast no-op when up to date
#   scripts/setup-venv.sh --force    # reinstall even when the stamp matches
#   scripts/setup-venv.sh --recreate # delete .venv first
#   scripts/setup-venv.sh --smoke    # then check Chainer/ChainerMN, 2 MPI ranks, torch CPU
#
# Environment knobs:
#   PYTHON          interpreter that creates the venv (default: python3)
#   FITDOCK_VENV    venv location (default: <repo>/.venv)
#   FITDOCK_EXTRAS  extras to install (default: all,test,bench)
#   ALLOW_CUDA_TORCH=1  accept a CUDA build of torch (default: fail, CPU expected)
#
# Pins that matter (see shared RECIPES.md):
#   * constraints/chainer.txt (numpy<2, setuptools>=77.0.3,<82) must reach Chainer
#     7.8.1's isolated sdist build: PIP_BUILD_CONSTRAINT (pip >= 25.3) and
#     PIP_CONSTRAINT (older pips) both point at it.
#   * constraints/ci.txt adds torch==2.13.0, else torch>=2.1 pulls the newest
#     CUDA torch from PyPI instead of the local 2.13.0+cpu wheel.
#   * Chainer needs SETUPTOOLS_USE_DISTUTILS=stdlib at run time.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
VENV=${FITDOCK_VENV:-$ROOT/.venv}
EXTRAS=${FITDOCK_EXTRAS:-all,test,bench}
PIP_SPEC='pip>=25.3,<27'
RUNTIME_CONSTRAINTS=$ROOT/constraints/ci.txt
BUILD_CONSTRAINTS=$ROOT/constraints/chainer.txt
STAMP=$VENV/.fitdock-setup.stamp
# Bump when this script changes what it installs, to invalidate old stamps.
RECIPE_VERSION=2

FORCE=0
RECREATE=0
SMOKE=0
for arg in "$@"; do
    case $arg in
        --force) FORCE=1 ;;
        --recreate) RECREATE=1 ;;
        --smoke) SMOKE=1 ;;
        -h | --help) sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup-venv: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

T0=$(date +%s.%N)
T_STEP=$T0

# Print the time of the step just finished and the running total.
step_done() {
    local now
    now=$(date +%s.%N)
    awk -v what="$1" -v a="$T_STEP" -v b="$now" -v t0="$T0" \
        'BEGIN { printf "setup-venv: %-40s %6.1f s  (total %6.1f s)\n", what, b - a, b - t0 }'
    T_STEP=$now
}

# Hash of everything that decides what gets installed.
install_key() {
    {
        echo "recipe=$RECIPE_VERSION extras=$EXTRAS pip=$PIP_SPEC"
        "$VENV/bin/python" -c 'import sys; print(sys.version)'
        cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" "$ROOT"/constraints/*.txt
    } | sha256sum | cut -d' ' -f1
}

# A venv is reusable when its python runs, has pip, and matches $PYTHON's X.Y.
venv_ok() {
    local want have
    [[ -x $VENV/bin/python ]] || return 1
    want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    have=$("$VENV/bin/python" -c 'import sys, pip; print("%d.%d" % sys.version_info[:2])' \
        2>/dev/null) || return 1
    [[ $want == "$have" ]]
}

# Fail when torch is a CUDA build (nvidia-* wheels come with it) unless allowed.
check_torch_cpu() {
    local torch_version
    torch_version=$("$VENV/bin/python" -c \
        'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null) || return 0
    if [[ $torch_version != *+cpu ]]; then
        echo "setup-venv: torch $torch_version is not the CPU build (2.13.0+cpu expected)." >&2
        [[ ${ALLOW_CUDA_TORCH:-0} == 1 ]] || exit 1
    fi
}

print_versions() {
    "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import sys

names = ["pip", "setuptools", "numpy", "chainer", "mpi4py", "mpich", "torch", "docker",
         "pytest", "ruff", "mypy", "submitit", "torchx", "fitdock"]
found = []
for name in names:
    try:
        found.append(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        found.append(f"{name}: not installed")
print(f"setup-venv: python {sys.version.split()[0]}; " + ", ".join(found))
EOF
}

# Imports that need the pins, 2 MPI ranks with the venv's mpiexec, torch without CUDA.
smoke_test() {
    SETUPTOOLS_USE_DISTUTILS=stdlib "$VENV/bin/python" -W ignore \
        -c 'import chainer, chainermn, mpi4py; print("smoke: chainer", chainer.__version__)'
    "$VENV/bin/mpiexec" -n 2 "$VENV/bin/python" -c \
        'from mpi4py import MPI; c = MPI.COMM_WORLD; print(f"smoke: rank {c.rank}/{c.size}")'
    "$VENV/bin/python" -c \
        'import torch; assert torch.version.cuda is None; print("smoke: torch", torch.__version__)'
    step_done "smoke test"
}

if [[ $RECREATE == 1 && -d $VENV ]]; then
    rm -rf "$VENV"
fi
if venv_ok; then
    step_done "reuse $VENV"
else
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    step_done "create $VENV"
fi

KEY=$(install_key)
if [[ $FORCE == 0 && -f $STAMP && $(cat "$STAMP") == "$KEY" ]]; then
    step_done "up to date (stamp ${KEY:0:12})"
    [[ $SMOKE == 0 ]] || smoke_test
    exit 0
fi
rm -f "$STAMP"

export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install --quiet --upgrade "$PIP_SPEC"
step_done "upgrade pip"

export PIP_CONSTRAINT=$RUNTIME_CONSTRAINTS
export PIP_BUILD_CONSTRAINT=$BUILD_CONSTRAINTS
# Compat mode: one plain path line in a .pth file. The default editable install is a
# finder module that imports pathlib, re and urllib at every interpreter start (18 ms of a
# 37 ms `python -c pass` on the 2-core VM), and every reaper, rank and test child starts
# one. setuptools < 82 (the build constraints) keeps compat mode.
"$VENV/bin/python" -m pip install --progress-bar off \
    --config-settings editable_mode=compat -e "${ROOT}[${EXTRAS}]"
step_done "pip install -e .[$EXTRAS]"

check_torch_cpu
"$VENV/bin/python" -m pip check
print_versions
step_done "check"

echo "$KEY" >"$STAMP"
[[ $SMOKE == 0 ]] || smoke_test
echo "setup-venv: done. Chainer needs SETUPTOOLS_USE_DISTUTILS=stdlib at run time;" \
    "MPI launcher: $VENV/bin/mpiexec"
