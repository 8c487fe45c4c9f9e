"""Run by the job's own interpreter, where the job runs: which MPI would it load?

Stdlib only, and passed to the interpreter as ``python -c <this file's text>`` (inside a
container, on a remote host), so it imports nothing of fitdock. It prints one JSON object:

``mpi4py``   ``{"library": MPI.Get_library_version(), "abis": [...]}``, read without
             initialising MPI; ``abis`` lists the MPI families a PyPI wheel of mpi4py can
             load (``MPI4PY_LIBMPI`` picks one), empty for an mpi4py built for one MPI.
             ``{"error": ...}`` when it cannot load an MPI at all; null without mpi4py.
``horovod``  ``{"needed": [...]}``: the ``libmpi`` sonames Horovod's framework libraries
             link to (read from their ELF headers, without importing Horovod); null
             without Horovod.
``launchers`` with ``--launchers [PROGRAM]``: ``[{"path", "code", "text", "libs"}]``, the
             ``--version`` of every mpirun/mpiexec beside this interpreter, on PATH and in
             /usr/bin (or of PROGRAM alone), with the ``libmpi`` files in ``<prefix>/lib``.
"""

import glob
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys

NAMES = ("mpirun", "mpiexec")
ABIS = ("mpich", "openmpi", "impi", "msmpi", "mpiabi")


def mpi4py_info():
    spec = importlib.util.find_spec("mpi4py")
    if spec is None or not spec.origin:
        return None
    folder = os.path.dirname(spec.origin)
    abis = sorted(
        {
            parts[1]
            for parts in (name.split(".") for name in os.listdir(folder))
            if parts[0] == "MPI" and len(parts) == 4 and parts[1] in ABIS
        }
    )
    try:
        import mpi4py

        mpi4py.rc.initialize = False
        mpi4py.rc.finalize = False
        from mpi4py import MPI

        return {"library": MPI.Get_library_version().strip(), "abis": abis}
    except Exception as exc:  # no MPI library can be loaded: say so, the caller decides
        return {"error": f"{type(exc).__name__}: {exc}".strip(), "abis": abis}


def elf_needed(path):
    """The DT_NEEDED names of a 64-bit little-endian ELF file ([] for anything else)."""
    with open(path, "rb") as handle:
        head = handle.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return []
        phoff = struct.unpack_from("<Q", head, 32)[0]
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
        loads, dynamic = [], None
        for index in range(phnum):
            kind, _flags, offset, vaddr, _paddr, filesz = struct.unpack_from(
                "<IIQQQQ", table, index * phentsize
            )
            if kind == 1:  # PT_LOAD
                loads.append((vaddr, offset, filesz))
            elif kind == 2:  # PT_DYNAMIC
                dynamic = (offset, filesz)
        if dynamic is None:
            return []
        handle.seek(dynamic[0])
        data = handle.read(dynamic[1])
        entries = [struct.unpack_from("<qQ", data, i) for i in range(0, len(data) - 15, 16)]
        strtab = next((value for tag, value in entries if tag == 5), None)  # DT_STRTAB
        if strtab is None:
            return []
        base = next((off + strtab - va for va, off, size in loads if va <= strtab < va + size), 0)
        names = []
        for tag, value in entries:
            if tag == 1:  # DT_NEEDED
                handle.seek(base + value)
                names.append(handle.read(256).split(b"\0", 1)[0].decode(errors="replace"))
        return names


def horovod_info():
    spec = importlib.util.find_spec("horovod")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = next(iter(spec.submodule_search_locations))
    needed = set()
    for library in glob.glob(os.path.join(root, "*", "mpi_lib*.so")):
        try:
            needed.update(name for name in elf_needed(library) if name.startswith("libmpi"))
        except OSError:
            continue
    return {"needed": sorted(needed)}


def launchers(only=None):
    folders = [os.path.dirname(sys.executable)]
    folders += [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]
    if only:
        program = shutil.which(only)
        paths = [program] if program else []
    else:
        paths = [os.path.join(folder, name) for folder in folders if folder for name in NAMES]
    found, seen = [], set()
    for path in paths:
        real = os.path.realpath(path)
        if real in seen or not os.access(path, os.X_OK):
            continue
        seen.add(real)
        try:
            done = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=20, check=False
            )
            code, text = done.returncode, done.stdout + done.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            code, text = 127, str(exc)
        libdir = os.path.join(os.path.dirname(os.path.dirname(path)), "lib")
        libs = sorted(glob.glob(os.path.join(libdir, "libmpi.so*")))
        found.append({"path": path, "code": code, "text": text, "libs": libs})
    return found


def main():
    report = {"mpi4py": mpi4py_info(), "horovod": horovod_info(), "python": sys.executable}
    args = sys.argv[1:]
    if "--launchers" in args:
        rest = args[args.index("--launchers") + 1 :]
        report["launchers"] = launchers(rest[0] if rest else None)
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
