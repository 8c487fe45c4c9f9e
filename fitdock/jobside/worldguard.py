"""The world-size guard: every rank's ``sitecustomize``.

Copied into the run as ``guard/sitecustomize.py`` and put first on the ranks'
PYTHONPATH by MPI and Horovod jobs, so Python imports it at start-up. It watches two
imports: when ``mpi4py.MPI`` has initialised MPI, and when Horovod's ``init()`` has
returned, it compares the size of the world the rank joined with the number of ranks
fitdock started (``FITDOCK_WORLD_SIZE``). A rank whose launcher and MPI library do not
match joins a world of one and would train alone on all the data; here it writes
``rank_<r>.world.json`` beside its logs, says why on stderr and exits with ``EXIT_CODE``
at once, so the run fails fast instead of reporting Completed.

It also gives mpi4py the behaviour of ``python -m mpi4py``: once ``mpi4py.MPI`` is
imported, an exception that nothing catches, raised while MPI is initialised and not yet
finalised, prints its traceback and then aborts ``COMM_WORLD`` (``MPI_Abort``). Without that
the rank's interpreter would exit into ``MPI_Finalize`` and wait there for ranks blocked in a
collective, and the job would hang until its deadline.

Then it imports the ``sitecustomize`` it shadows, if there is one. Stdlib only, and small:
it runs at every rank's start.
"""

import os
import sys

EXIT_CODE = 97
WATCHED = ("mpi4py.MPI", "horovod.common.basics")


def _fail(what, size, expected, detail):
    rank = os.environ.get("RANK", "0")
    message = (
        f"fitdock: {what} formed an MPI world of {size} rank(s), but {expected} were started: "
        f"the launcher ({os.environ.get('FITDOCK_MPI', 'unknown')}) and the MPI library the "
        f"job loads ({detail}) do not match. Use a launcher of that MPI (Mpi(mpirun=...)) or "
        "load the launcher's library (MPI4PY_LIBMPI)."
    )
    logs = os.environ.get("FITDOCK_LOG_DIR")
    if logs:
        import json

        record = {"rank": int(rank), "what": what, "size": size, "expected": expected}
        record.update(library=detail, message=message)
        target = os.path.join(logs, f"rank_{rank}.world.json")
        try:
            with open(target + ".tmp", "w") as handle:
                json.dump(record, handle)
            os.replace(target + ".tmp", target)
        except OSError:
            pass
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)


def _expected():
    try:
        return int(os.environ["FITDOCK_WORLD_SIZE"])
    except (KeyError, ValueError):
        return None


def _abort_on_exception(module):
    """Chain ``sys.excepthook``: after the usual traceback, abort the MPI world if MPI is
    initialised (``mpi4py.run``'s rule), so the other ranks do not wait for this one."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        previous(kind, value, traceback)
        try:
            live = module.Is_initialized() and not module.Is_finalized()
        except Exception:
            return
        if live:
            if sys.stderr is not None:
                sys.stderr.flush()
            module.COMM_WORLD.Abort(1)

    sys.excepthook = hook


def _check_mpi4py(module):
    _abort_on_exception(module)
    expected = _expected()
    try:
        if expected is None or not module.Is_initialized() or module.Is_finalized():
            return
        if module.Comm.Get_parent() != module.COMM_NULL:
            return  # started by MPI_Comm_spawn: a world of its own on purpose
        size = module.COMM_WORLD.Get_size()
        library = module.Get_library_version().replace("\0", "").strip().splitlines()[0]
    except Exception:
        return
    if size != expected:
        _fail("mpi4py", size, expected, library)


def _check_horovod(module):
    basics = getattr(module, "HorovodBasics", None)
    if basics is None:
        return
    original = basics.init

    def init(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        expected = _expected()
        whole_world = not args and kwargs.get("comm") is None
        if expected is not None and whole_world:
            size = self.size()
            if size != expected:
                built = "MPI" if self.mpi_built() else "no MPI"
                _fail("Horovod", size, expected, f"Horovod built with {built}")
        return result

    basics.init = init


class _Watcher:
    """A meta path finder that lets the real finders find a watched module, then runs a
    check right after the module has executed."""

    checks = {"mpi4py.MPI": _check_mpi4py, "horovod.common.basics": _check_horovod}

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        check = cls.checks.get(name)
        if check is None:
            return None
        for finder in sys.meta_path:
            if finder is cls or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module

        def exec_module(module):
            execute(module)
            check(module)

        loader.exec_module = exec_module
        return spec


def _chain():
    """Import the ``sitecustomize`` that this file shadows on sys.path, if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    this = sys.modules.pop("sitecustomize", None)
    try:
        import importlib.util

        if importlib.util.find_spec("sitecustomize") is not None:
            import sitecustomize  # noqa: F401
    finally:
        sys.path[:] = saved
        if this is not None:  # the import system that is importing this file expects it there
            sys.modules["sitecustomize"] = this


if os.environ.get("FITDOCK_WORLD_SIZE"):
    sys.meta_path.insert(0, _Watcher)
_chain()
