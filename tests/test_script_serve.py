"""``fitdock script serve`` through a real HTTP client: uvicorn on 127.0.0.1 in a thread,
httpx talking to it, warm workers (sandboxed with bubblewrap where it is installed)
calling a real ``azureml_main``.

Two services run once per module: ``service`` (2 workers, a 3 s time limit, a bundle,
the default sandbox) and ``guarded`` (a token, a 64 KiB body limit, 1 worker, no sandbox).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from helpers import pid_alive, wait_until

from fitdock.errors import ScriptError, SpecError
from fitdock.script.handle import worker_environment
from fitdock.script.serve import create_app, is_loopback, serve

pytestmark = pytest.mark.timeout(60)

LIMIT_S = 3.0
SCRIPT = textwrap.dedent(
    """\
    import errno, os, socket, sys, time
    import pandas as pd

    def azureml_main(dataframe1=None, dataframe2=None):
        command = dataframe1["command"][0] if "command" in dataframe1 else None
        if command == "raise":
            raise ValueError("bad value in row 0")
        if command == "sleep":
            time.sleep(float(dataframe1["seconds"][0]))
        if command == "exit":
            os._exit(3)
        if command == "noisy":
            print("1 ok {}")  # what an answer line looks like
            sys.stdout.write("0 ready {}\\n")
            print(repr(sys.stdin.read()))
            os.write(1, b"written to fd 1\\n")
        if command == "connect":
            try:
                socket.create_connection(("127.0.0.1", int(dataframe1["port"][0])), 5).close()
                return pd.DataFrame({"result": ["connected"]})
            except OSError as exc:
                return pd.DataFrame({"result": [errno.errorcode.get(exc.errno, str(exc))]})
        if command == "bundle":
            from bundled import greeting  # from the bundle, on sys.path
            return pd.DataFrame({"said": [greeting()], "here": [os.path.isdir("Script Bundle")]})
        if command == "odd":
            return pd.DataFrame([[1.5, float("inf"), None, pd.Timestamp("2024-01-02")]],
                                columns=["x", "x", "missing", "when"])
        out = dataframe1.copy()
        out["total"] = out["a"] + out["b"]
        return out, dataframe2
    """
)
RAISE_LINE = SCRIPT.splitlines().index('        raise ValueError("bad value in row 0")') + 1
TOKEN = "s3cret-token"
SMALL_LIMIT = 64 * 1024


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port, in a thread; its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # see _listen
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started or not thread.is_alive(), 60)
        assert server.started, "the service did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Any]]:
    folder = tmp_path_factory.mktemp("serve")
    script = folder / "score.py"
    script.write_text(SCRIPT)
    with zipfile.ZipFile(folder / "bundle.zip", "w") as bundle:
        bundle.writestr("bundled.py", "def greeting():\n    return 'hello from the bundle'\n")
    app = create_app(script, bundle=folder / "bundle.zip", workers=2, timeout=LIMIT_S)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, app


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    script = tmp_path_factory.mktemp("guarded") / "echo.py"
    script.write_text("def azureml_main(dataframe1):\n    return dataframe1\n")
    app = create_app(
        script, workers=1, token=TOKEN, sandbox="off", max_body_bytes=SMALL_LIMIT, timeout=10
    )
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture
def client(service: tuple[httpx.Client, Any]) -> httpx.Client:
    return service[0]


def rows(count: int) -> list[dict[str, Any]]:
    return [{"a": i, "b": i / 2, "name": f"row {i}"} for i in range(count)]


def score(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return client.post("/score", json=body)


def command(name: str, **values: Any) -> dict[str, Any]:
    return {"dataframe1": [{"command": name, "a": 1, "b": 2, **values}]}


def live_pids(app: Any) -> set[int]:
    return {worker.pid for worker in app.state.pool.workers}


def two_workers_idle(client: httpx.Client) -> bool:
    health = client.get("/health").json()
    return health["workers"] == 2 and health["idle"] == 2


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def test_both_request_shapes(client: httpx.Client) -> None:
    second = [{"label": "x", "flag": True}, {"label": None, "flag": False}]
    got = score(client, {"dataframe1": rows(3), "dataframe2": second})
    assert got.status_code == 200, got.text
    results = got.json()["Results"]
    assert [r["total"] for r in results["output1"]] == [0.0, 1.5, 3.0]
    assert results["output1"][1] == {"a": 1, "b": 0.5, "name": "row 1", "total": 1.5}
    assert results["output2"] == second

    azure = {"Inputs": {"input1": rows(2), "input2": second}, "GlobalParameters": {}}
    got = score(client, azure)
    assert got.status_code == 200, got.text
    assert got.json()["Results"]["output1"] == results["output1"][:2]
    assert got.json()["Results"]["output2"] == second
    only = score(client, {"Inputs": {"input1": rows(1)}})
    assert only.json()["Results"] == {"output1": [{**rows(1)[0], "total": 0.0}], "output2": []}


def test_a_hundred_rows_with_missing_values(client: httpx.Client) -> None:
    table = rows(100)
    table[7]["b"] = None
    got = score(client, {"dataframe1": table})
    assert got.status_code == 200, got.text
    out = got.json()["Results"]["output1"]
    assert len(out) == 100
    assert [r["name"] for r in out] == [f"row {i}" for i in range(100)]
    assert out[7]["b"] is None and out[7]["total"] is None
    assert out[99]["total"] == 99 + 49.5


def test_outputs_are_normalized(client: httpx.Client) -> None:
    got = score(client, command("odd"))
    assert got.status_code == 200, got.text
    assert got.json()["Results"]["output1"] == [
        {"x": 1.5, "x (2)": None, "missing": None, "when": "2024-01-02 00:00:00"}
    ]  # duplicate names renamed, inf and NaN null, other types as strings


def test_the_bundle_is_importable(client: httpx.Client) -> None:
    got = score(client, command("bundle"))
    assert got.status_code == 200, got.text
    assert got.json()["Results"]["output1"] == [{"said": "hello from the bundle", "here": True}]


def test_prints_and_stdin_do_not_touch_the_protocol(client: httpx.Client) -> None:
    got = score(client, command("noisy"))
    assert got.status_code == 200, got.text
    assert got.json()["Results"]["output1"][0]["total"] == 3


def test_concurrent_requests_each_get_their_own_answer(client: httpx.Client) -> None:
    def one(number: int) -> tuple[int, httpx.Response]:
        table = [{"a": number, "b": k, "name": str(number)} for k in range(100)]
        return number, score(client, {"dataframe1": table})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8 * 4)))
    for number, got in answers:
        assert got.status_code == 200, got.text
        out = got.json()["Results"]["output1"]
        assert {r["name"] for r in out} == {str(number)}
        assert [r["total"] for r in out] == [number + k for k in range(100)]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_script_exception_is_500_and_the_service_keeps_serving(client: httpx.Client) -> None:
    got = score(client, command("raise"))
    assert got.status_code == 500
    assert got.json() == {
        "detail": f"Got exception when invoking script at line {RAISE_LINE} in function "
        "azureml_main: 'ValueError: bad value in row 0'.",
        "exception": "ValueError",
        "line": RAISE_LINE,
    }
    for _ in range(3):  # both workers, whichever had the error
        assert score(client, {"dataframe1": rows(2)}).status_code == 200


def test_time_limit_is_504_and_the_worker_is_replaced(
    service: tuple[httpx.Client, Any],
) -> None:
    client, app = service
    assert wait_until(lambda: two_workers_idle(client), 30)
    before = live_pids(app)
    workdirs = {worker.workdir for worker in app.state.pool.workers}
    started = time.monotonic()
    got = score(client, command("sleep", seconds=30))
    took = time.monotonic() - started
    assert got.status_code == 504
    assert f"time limit of {LIMIT_S:g} s" in got.json()["detail"]
    assert LIMIT_S <= took < LIMIT_S + 5
    assert score(client, {"dataframe1": rows(1)}).status_code == 200  # the other worker
    killed = before - live_pids(app)
    assert len(killed) == 1
    assert wait_until(lambda: not any(pid_alive(pid) for pid in killed), 5)
    assert wait_until(lambda: two_workers_idle(client), 30)  # a fresh one replaced it
    gone = workdirs - {worker.workdir for worker in app.state.pool.workers}
    assert len(gone) == 1 and not next(iter(gone)).exists()


def test_no_free_worker_within_the_limit_is_503(service: tuple[httpx.Client, Any]) -> None:
    client, _ = service
    assert wait_until(lambda: two_workers_idle(client), 30)
    with ThreadPoolExecutor(2) as pool:
        sleepers = [pool.submit(score, client, command("sleep", seconds=30)) for _ in range(2)]
        assert wait_until(lambda: client.get("/health").json()["idle"] == 0, 10)
        late = score(client, {"dataframe1": rows(1)})
        assert [s.result().status_code for s in sleepers] == [504, 504]
    assert late.status_code == 503
    assert f"no worker became free within {LIMIT_S:g} s" in late.json()["detail"]
    assert wait_until(lambda: two_workers_idle(client), 30)
    assert score(client, {"dataframe1": rows(1)}).status_code == 200


def test_worker_that_dies_is_500_and_replaced(service: tuple[httpx.Client, Any]) -> None:
    client, app = service
    assert wait_until(lambda: two_workers_idle(client), 30)
    before = live_pids(app)
    got = score(client, command("exit"))
    assert got.status_code == 500
    assert "exited with code 3" in got.json()["detail"]
    assert score(client, {"dataframe1": rows(1)}).status_code == 200
    assert wait_until(lambda: two_workers_idle(client), 30)
    [gone] = before - live_pids(app)
    assert not pid_alive(gone)


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"dataframe1": [[1, 2]]}, ["body", "dataframe1"], "row 0 is a list, not an object"),
        ({"dataframe1": [{"a": 1}, 5]}, ["body", "dataframe1"], "row 1 is a number"),
        ({"dataframe1": {"a": 1}}, ["body", "dataframe1"], "a table is a list of rows"),
        ({"dataframe1": [{"a": {"b": 1}}]}, ["body", "dataframe1"], "column 'a': an object"),
        ({"Inputs": {"input1": [["x"]]}}, ["body", "Inputs", "input1"], "row 0 is a list"),
        ({"dataframe3": []}, ["body", "dataframe3"], "Extra inputs are not permitted"),
        ({"dataframe1": [], "Inputs": {}}, ["body"], "not both"),
        ({"GlobalParameters": {"alpha": 1}}, ["body"], "GlobalParameters alpha"),
    ],
)
def test_malformed_rows_are_422_naming_the_problem(
    client: httpx.Client, body: dict[str, Any], loc: list[Any], words: str
) -> None:
    got = score(client, body)
    assert got.status_code == 422
    [error] = got.json()["detail"]
    assert error["loc"] == loc and words in error["msg"], error


def test_malformed_json_is_422(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    got = client.post("/score", content=b'{"dataframe1": [{"a": 1},', headers=headers)
    assert got.status_code == 422
    [error] = got.json()["detail"]
    assert error["type"] == "json_invalid" and "JSON decode error" in error["msg"]
    form = client.post("/score", content=b"a=1", headers={"content-type": "text/plain"})
    assert form.status_code == 415 and "application/json" in form.json()["detail"]


# ---------------------------------------------------------------------------------------------
# Token and size
# ---------------------------------------------------------------------------------------------
def test_token_is_required_on_every_request(guarded: httpx.Client) -> None:
    body = {"dataframe1": rows(2)}
    missing = guarded.post("/score", json=body)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = guarded.post("/score", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    basic = guarded.post("/score", json=body, headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    assert guarded.get("/health").status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    right = guarded.post("/score", json=body, headers=auth)
    assert right.status_code == 200, right.text
    assert right.json()["Results"]["output1"] == rows(2)
    assert guarded.get("/health", headers=auth).json()["workers"] == 1


def test_body_over_the_limit_is_413(guarded: httpx.Client) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    big = {"dataframe1": [{"text": "x" * 1000} for _ in range(100)]}  # ~100 KB
    got = guarded.post("/score", json=big, headers=auth)
    assert got.status_code == 413 and f"{SMALL_LIMIT:,} bytes" in got.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"dataframe1": ['
        for _ in range(100):
            yield b'{"text": "' + b"x" * 1000 + b'"},'
        yield b'{"text": "end"}]}'

    headers = {**auth, "content-type": "application/json"}
    got = guarded.post("/score", content=chunks(), headers=headers)
    assert got.status_code == 413
    small = guarded.post("/score", json={"dataframe1": rows(3)}, headers=auth)
    assert small.status_code == 200


def test_too_few_inputs_is_422(guarded: httpx.Client) -> None:
    got = guarded.post("/score", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert got.status_code == 422
    assert "azureml_main needs 1 input table(s); the request gave 0" in got.text


# ---------------------------------------------------------------------------------------------
# The service around the script
# ---------------------------------------------------------------------------------------------
def test_health_and_openapi(service: tuple[httpx.Client, Any]) -> None:
    client, app = service
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["workers"] == 2
    assert health["isolation"] == app.state.sandbox["isolation"]
    schema = client.get("/openapi.json").json()
    assert {"/score", "/health"} <= set(schema["paths"])
    assert "ScoreRequest" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_workers_are_sandboxed(
    bwrap: None, loopback_server: int, service: tuple[httpx.Client, Any]
) -> None:
    client, app = service
    if app.state.sandbox["isolation"] != "bubblewrap":
        pytest.skip(f"bubblewrap cannot make namespaces here: {app.state.sandbox['warnings']}")
    with socket.create_connection(("127.0.0.1", loopback_server), 5):
        pass  # reachable from the host
    got = score(client, command("connect", port=loopback_server))
    assert got.status_code == 200, got.text
    assert got.json()["Results"]["output1"][0]["result"] in {"ECONNREFUSED", "ENETUNREACH"}


def test_a_public_address_needs_a_token(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("def azureml_main():\n    return None\n")
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        with pytest.raises(SpecError, match="give a token") as caught:
            serve(script, host=host, port=0)
        assert caught.value.field == "host"
    with pytest.raises(SpecError, match="token must not be empty"):
        serve(script, host="0.0.0.0", token=" ", port=0)
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))


def test_serve_runs_until_sigterm_and_leaves_nothing_behind(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("def azureml_main(dataframe1):\n    return dataframe1\n")
    temp = tmp_path / "temp"
    temp.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = f"from fitdock.script.serve import serve; serve({str(script)!r}, port={port})"
    env = {**os.environ, "TMPDIR": str(temp)}  # the workers' folders are made here
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/health", timeout=1).json()["idle"] == 2
            return False

        assert wait_until(healthy, 30), "serve() did not answer /health"
        assert len(list(temp.glob("fitdock-serve-*"))) == 3  # the script's copy, 2 workers
        with httpx.Client(base_url=url, timeout=30) as client:
            got = client.post("/score", json={"dataframe1": rows(2)})
            assert got.json()["Results"]["output1"] == rows(2)
            took = []
            for _ in range(9):
                started = time.perf_counter()
                client.get("/health")
                took.append(time.perf_counter() - started)
        assert sorted(took)[4] < 0.03  # no 40 ms Nagle/delayed-ACK stall on its socket
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert f"s.py on http://127.0.0.1:{port}" in err.decode()
    assert list(temp.iterdir()) == []


def test_a_port_in_use_is_refused_before_workers_start(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("def azureml_main():\n    return None\n")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(SpecError, match=f"cannot listen on 127.0.0.1:{port}") as caught:
            serve(script, port=port, sandbox="off")
    assert caught.value.field == "port"


def test_a_script_that_cannot_load_stops_serve_before_it_serves(tmp_path: Path) -> None:
    script = tmp_path / "nomain.py"
    script.write_text("print('loaded')\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ScriptError, match="defines no function azureml_main"):
        serve(script, port=port, workers=1, sandbox="off")
    broken = tmp_path / "broken.py"
    broken.write_text("def azureml_main(:\n")
    with pytest.raises(ScriptError, match="does not compile") as caught:
        create_app(broken)
    assert caught.value.line == 1
    raising = tmp_path / "raising.py"
    raising.write_text("import no_such_module_here\n")
    with pytest.raises(ScriptError, match="ModuleNotFoundError: No module named"):
        serve(raising, port=port, workers=1, sandbox="off")


def test_bad_arguments_are_refused_before_anything_starts(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("def azureml_main():\n    return None\n")
    cases: list[tuple[str, dict[str, Any]]] = [
        ("workers", {"workers": 0}),
        ("timeout", {"timeout": -1}),
        ("max_body_bytes", {"max_body_bytes": 0}),
        ("sandbox", {"sandbox": "loose"}),
    ]
    for field, kwargs in cases:
        with pytest.raises(SpecError) as caught:
            create_app(script, **kwargs)
        assert caught.value.field == field
    with pytest.raises(SpecError, match="is not a file"):
        create_app(tmp_path / "missing.py")


def test_the_workers_do_not_get_the_token_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FITDOCK_SERVE_TOKEN", "s3cret")
    env = worker_environment(tmp_path)
    assert "FITDOCK_SERVE_TOKEN" not in env and "s3cret" not in env.values()
    assert env["PATH"] == os.environ["PATH"] and env["MPLBACKEND"] == "Agg"
    assert env["MPLCONFIGDIR"] == env["XDG_CACHE_HOME"] == str(tmp_path / ".cache")


def test_importing_fitdock_does_not_import_the_server() -> None:
    code = (
        "import sys, fitdock, fitdock.cli, fitdock.script, fitdock.script.worker\n"
        "import fitdock.script.pool, fitdock.script.handle, fitdock.script.protocol\n"
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'pandas') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
