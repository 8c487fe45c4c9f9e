"""``fitdock script serve``: an ``azureml_main`` script as a scoring web service (FastAPI,
served by uvicorn), the seed's published experiment: the app, its routes and
:func:`serve`.

    POST /score          {"dataframe1": [row, ...], "dataframe2": [...]}, or Azure classic's
                         {"Inputs": {"input1": [...], "input2": [...]}, "GlobalParameters": {}}
                         -> {"Results": {"output1": [row, ...], "output2": [...]}}
    GET  /health         the pool: workers, idle ones, the isolation
    GET  /docs, /openapi.json   FastAPI's own pages

A row is a JSON object ``{column: value}``; values are strings, numbers, booleans or null.
The tables given are the script's inputs in order (the first to ``dataframe1``). Each
request runs in one of ``workers`` warm worker processes (:mod:`fitdock.script.pool`),
sandboxed as ``sandbox`` asks, within ``timeout`` seconds. Answers: 200; 401 without the
token (when one is set: every path asks for ``Authorization: Bearer TOKEN``); 413 for a
body over ``max_body_bytes``; 422 for malformed JSON or rows, naming the problem; 500 when
the script raised (Azure's message) or its worker died; 503 when no worker was free within
``timeout``; 504 when the script ran past ``timeout`` (its worker is killed and replaced).
The bodies are :mod:`fitdock.script.models`; the token and size checks
:mod:`fitdock.script.guard`.

FastAPI and uvicorn (the ``serve`` extra) are imported when an app is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitdock.errors import NotAvailableError, ScriptError, SpecError
from fitdock.script.bundle import check_bundle
from fitdock.script.guard import Guard
from fitdock.script.handle import WorkerSpec
from fitdock.script.models import ErrorResponse, ScoreRequest, ScoreResponse
from fitdock.script.pool import WorkerPool
from fitdock.script.protocol import TOKEN_VARIABLE, Answer, Outcome
from fitdock.script.sandbox import choose

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.responses import Response

__all__ = ["MAX_BODY_BYTES", "create_app", "is_loopback", "serve"]

MAX_BODY_BYTES = 10 * 1024 * 1024
STATUS = {
    Outcome.OK: 200,
    Outcome.SCRIPT_ERROR: 500,
    Outcome.WORKER_LOST: 500,
    Outcome.BUSY: 503,
    Outcome.TIMED_OUT: 504,
}


# ------------------------------------------------------------------ the app
def create_app(
    script: str | Path,
    *,
    bundle: str | Path | None = None,
    workers: int = 2,
    token: str | None = None,
    timeout: float = 30.0,
    sandbox: str = "auto",
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The service's app; its lifespan starts the workers (:class:`ScriptError` when the
    script cannot load) and stops them. Checked first, before anything starts: the script
    is a file that compiles, the bundle a safe zip, the numbers positive, the sandbox
    available (``strict``). ``app.state.sandbox`` holds the isolation and its warnings."""
    _need_the_extra()
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError

    path, text = _script(script)
    bundle_path = _bundle(bundle)
    _positive("workers", workers, integer=True)
    _positive("timeout", timeout)
    _positive("max_body_bytes", max_body_bytes, integer=True)
    if token is not None and not token.strip():
        raise SpecError("token must not be empty; leave it out for no token", field="token")
    isolation, warnings = choose(sandbox)
    pool = WorkerPool(WorkerSpec(path.name, text, bundle_path, isolation), workers, timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        try:
            yield
        finally:
            await pool.stop()

    app = FastAPI(
        title=f"fitdock script serve: {path.name}",
        description="azureml_main as a scoring service (Azure ML Studio's Execute Python "
        "Script module, published). A row is a JSON object {column: value}.",
        lifespan=lifespan,
    )
    app.add_exception_handler(RequestValidationError, _invalid)
    app.state.pool = pool
    app.state.sandbox = {"isolation": isolation.value, "warnings": warnings}
    app.add_middleware(Guard, token=token, max_body_bytes=max_body_bytes)
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse} for code in (401, 413, 415, 500, 503, 504)
    }

    @app.post("/score", response_model=ScoreResponse, responses=errors)
    async def score(request: ScoreRequest) -> Any:
        """Call azureml_main over the tables given; its outputs as rows."""
        tables = request.tables()
        if len(tables) < pool.required:
            needs = f"azureml_main needs {pool.required} input table(s); the request gave "
            problem = {"type": "missing", "loc": ("body",), "msg": needs + str(len(tables))}
            raise RequestValidationError([problem])
        return _response(await pool.call(tables))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """The pool: live workers, idle ones, and the isolation they run in."""
        return {
            "status": "ok" if pool.workers else "no workers",
            "workers": len(pool.workers),
            "idle": pool.idle,
            "isolation": isolation.value,
        }

    return app


async def _invalid(request: Any, exc: Exception) -> Response:
    """422 naming each problem (where and what), without echoing the input back."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e["loc"]), "msg": _message(e), "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


def _message(error: dict[str, Any]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "json_invalid":  # FastAPI's: the position is in loc
        message += f": {error.get('ctx', {}).get('error', '')} at character {error['loc'][-1]}"
    return message


def _response(answer: Answer) -> Response:
    from fastapi.responses import JSONResponse, Response

    if answer.outcome is Outcome.OK:
        return Response(answer.body, media_type="application/json")
    if answer.outcome is Outcome.SCRIPT_ERROR:
        error = json.loads(answer.body)
        content = {
            "detail": error["message"],
            "exception": error.get("exception"),
            "line": error.get("line"),
        }
        return JSONResponse(content, status_code=STATUS[answer.outcome])
    return JSONResponse({"detail": answer.message}, status_code=STATUS[answer.outcome])


def _need_the_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise NotAvailableError(
            f"fitdock script serve needs the serve extra ({exc}); pip install 'fitdock[serve]'"
        ) from exc


def _script(script: str | Path) -> tuple[Path, str]:
    path = Path(script).expanduser()
    if not path.is_file():
        raise SpecError(f"script {path} is not a file", field="script")
    text = path.read_text()
    try:
        compile(text, str(path), "exec")
    except SyntaxError as exc:
        raise ScriptError(
            f"the script does not compile: {exc.msg} ({path.name}, line {exc.lineno})",
            line=exc.lineno,
            exception="SyntaxError",
        ) from exc
    return path, text


def _bundle(bundle: str | Path | None) -> Path | None:
    if bundle is None:
        return None
    path = Path(bundle).expanduser().resolve()
    if not path.is_file():
        raise SpecError(f"bundle {path} is not a file", field="bundle")
    check_bundle(path)  # ScriptBundleError naming the entry
    return path


def _positive(name: str, value: Any, *, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        what = "a positive whole number" if integer else "a positive number"
        raise SpecError(f"{name} must be {what}, not {value!r}", field=name)


# ------------------------------------------------------------------ serving
def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: ``localhost``, 127.0.0.0/8 or ``::1``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    script: str | Path,
    *,
    bundle: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 2,
    token: str | None = None,
    timeout: float = 30.0,
    sandbox: str = "auto",
    max_body_bytes: int = MAX_BODY_BYTES,
    log_level: str = "info",
) -> None:
    """Serve ``script`` on ``host:port`` until interrupted (see the module docstring).

    Refused before anything starts (:class:`SpecError`): an address other than loopback
    without a ``token``, a port outside 0..65535 or in use, and what :func:`create_app`
    refuses. The workers start before requests are accepted, so a script that cannot load
    raises :class:`ScriptError` here and no request is served.
    """
    app = create_app(
        script,
        bundle=bundle,
        workers=workers,
        token=token,
        timeout=timeout,
        sandbox=sandbox,
        max_body_bytes=max_body_bytes,
    )
    if token is None and not is_loopback(host):
        raise SpecError(
            f"host {host!r} is reachable from other machines: give a token (the variable "
            f"{TOKEN_VARIABLE}, --token-file or --token) that requests must send as "
            "'Authorization: Bearer TOKEN', or listen on 127.0.0.1",
            field="host",
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise SpecError(f"port must be 0..65535, not {port!r}", field="port")
    import uvicorn

    for warning in app.state.sandbox["warnings"]:
        print(f"fitdock script serve: warning: {warning}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, ws="none")
    with _listen(host, port) as sock:  # a port in use is a SpecError, before any worker
        where = sock.getsockname()
        url = f"http://{f'[{where[0]}]' if ':' in where[0] else where[0]}:{where[1]}"
        said = f"fitdock script serve: {Path(script).name} on {url} (POST /score, docs at /docs)"
        asyncio.run(_serve(app.state.pool, uvicorn.Server(config), sock, said))


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``. Its protocol is named (IPPROTO_TCP), else
    asyncio leaves Nagle's algorithm on for the connections it accepts (40 ms stalls)."""
    address = host.strip().strip("[]")
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            address, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(where)
            sock.listen(2048)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise SpecError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", field="port"
        ) from exc
    return sock


async def _serve(pool: WorkerPool, server: Any, sock: socket.socket, said: str) -> None:
    await pool.start()  # before serving (the lifespan's start is then a no-op)
    print(
        f"{said}; {pool.size} worker(s), {pool.spec.isolation.value}", file=sys.stderr, flush=True
    )
    try:
        await server.serve(sockets=[sock])
    finally:
        await pool.stop()
