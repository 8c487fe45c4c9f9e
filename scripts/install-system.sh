#!/usr/bin/env bash
# System packages the test suite uses beside the Python ones: Debian's Open MPI (so the
# suite runs Open MPI as well as the MPICH that the `mpi` extra brings from PyPI), and
# OpenSSH's server and client (tests/netns.py starts a private sshd per fake host; the
# package's own sshd service is never started: see policy-rc.d below); plus what
# scripts/build-horovod.sh needs to build Horovod (libopenmpi-dev, cmake, g++, make); and
# Slurm with munge and PMIx (the package's own daemons are not started either); xfsprogs;
# bubblewrap (the sandbox of Execute Python Script runs).
# Installs with apt-get when run as root on Debian/Ubuntu; otherwise says what is missing
# and leaves it to you (the tests that need it then skip, or fail with CI=true).
set -euo pipefail

missing=()
if ! /usr/bin/mpirun --version 2>/dev/null | grep -q "Open MPI"; then
    missing+=(openmpi-bin)
fi
if [[ ! -x /usr/sbin/sshd ]]; then
    missing+=(openssh-server)
fi
if ! command -v ssh >/dev/null || ! command -v ssh-keygen >/dev/null; then
    missing+=(openssh-client)
fi
# Horovod's build (scripts/build-horovod.sh): Open MPI's headers and compiler wrappers,
# CMake, a C++ compiler and make.
if ! /usr/bin/mpicxx --showme:version 2>/dev/null | grep -q "Open MPI"; then
    missing+=(libopenmpi-dev)
fi
for tool in cmake g++ make; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
# Slurm for the slurm tests (tests/slurm_cluster.py starts a private one-node cluster):
# the daemons and clients, munge, and PMIx for `srun --mpi=pmix`.
[[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd && -x /usr/bin/sbatch ]] || missing+=(slurm-wlm)
[[ -x /usr/sbin/munged ]] || missing+=(munge)
ls /usr/lib/*/libpmix.so.2 >/dev/null 2>&1 || missing+=(libpmix2)
# xfsprogs: tests/test_snapshot.py makes a private XFS image (loop-mounted) to prove that
# snapshots clone files where the filesystem has reflinks.
[[ -x /usr/sbin/mkfs.xfs ]] || missing+=(xfsprogs)
# bubblewrap: fitdock/script/sandbox.py runs azureml_main scripts under bwrap (read-only
# file system but the working folder, no network); tests/test_script_sandbox.py uses it.
command -v bwrap >/dev/null || missing+=(bubblewrap)
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
# Without systemd, openssh-server's (and munge's, slurm's) postinst would start system
# daemons: forbid service starts during the install unless a policy already exists.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi
status=0
apt-get install -y -qq "${missing[@]}" >/dev/null || status=$?
if ((made_policy)); then
    rm -f "$policy"
fi
if ((status != 0)); then
    exit "$status"
fi
echo "install-system: installed ${missing[*]} in $(($(date +%s) - start)) s"
