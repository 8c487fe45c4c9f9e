"""The docker target's promises, for real: cancel, SIGKILL after the grace, the hang
timeout, inputs read-only inside the container, ``shm_size``, the job's variables, and
``--gpus`` in the plan; and an image built with an extra CA certificate that ends up in the
image's trust store.

The jobs run in the image of ``test_docker_runs.py``'s environment (numpy, mpi4py, MPICH;
built FROM local/debian:bookworm once, a cache hit afterwards), used as it is
(``custom_docker_image`` + ``user_managed``: nothing more is built, and every variable
reaches the container at run time, not baked into a layer). Times are measured from marker
files the job writes, not from the launch."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import containers, wait_until, write_script

from fitdock import Estimator, Run, RunStatus
from fitdock.environments.image import BuiltImage, ensure_image, image_tag
from fitdock.environments.spec import DockerSection, Environment, PythonSection
from fitdock.execution.supervisor import FAIL_FAST_GRACE

BASE = "local/debian:bookworm"
PACKAGES = ["numpy<2", "mpi4py", "mpich"]  # test_docker_runs.py's: one image for both
GRACE = 2.0
SLACK = 4.0  # a loaded 2-core machine, a docker client and a container's teardown


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The image of ``test_docker_runs.py``'s environment (the same hash: a shared cache)."""
    src = write_script(tmp_path_factory.mktemp("image-src"), "print('unused')\n")
    env = Estimator(
        src, entry_script="train.py", pip_packages=PACKAGES, use_docker=True
    ).environment
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FITDOCK_HOME", str(tmp_path_factory.mktemp("fitdock-home")))
        return ensure_image(env, base_image=BASE, progress=False)


def in_image(image: BuiltImage, source: Path, **kwargs: Any) -> Estimator:
    options: dict[str, Any] = {
        "termination_grace_seconds": GRACE,
        "max_run_duration_seconds": 120,
        **kwargs,
    }
    return Estimator(
        source,
        entry_script="train.py",
        custom_docker_image=image.tag,
        user_managed=True,
        use_docker=True,
        **options,
    )


def mark(run: Run, name: str, timeout: float = 60) -> dict[str, Any]:
    """The JSON marker ``outputs/<name>`` the job writes, once it is there."""
    path = run.output_dir / name
    assert wait_until(path.exists, timeout), f"no {name} from the job ({run.status})"
    assert wait_until(lambda: path.read_text().endswith("}"), 5)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# ---------------------------------------------------------------------------------------------
# Cancel, and SIGKILL after the grace
# ---------------------------------------------------------------------------------------------
# Writes outputs/ready.json, then waits. On SIGTERM it writes outputs/term.json and either
# exits (argv "exit") or carries on (argv "ignore": only SIGKILL stops it).
TRAPS = """\
import json, os, signal, sys, time
out = os.environ["FITDOCK_OUTPUT_DIR"]
def put(name, data):
    with open(os.path.join(out, name + ".tmp"), "w") as f:
        json.dump(data, f)
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
def on_term(*_):
    put("term.json", {"at": time.time()})
    if sys.argv[1] == "exit":
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
put("ready.json", {"at": time.time(), "uid": os.getuid()})
while True:
    time.sleep(0.05)
"""


@pytest.mark.docker
def test_cancel_stops_the_job_in_its_container(image: BuiltImage, tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", TRAPS)
    run = in_image(image, src, script_params=["exit"]).fit(wait=False)
    ready = mark(run, "ready.json")
    assert ready["uid"] == os.getuid()
    assert containers(run.id), "the job should be running in its container"
    asked = time.time()
    run.cancel()
    run.wait_for_completion(raise_on_error=False)
    took = time.time() - asked
    print(f"docker cancel: ended {took:.2f} s after the request")
    assert run.status is RunStatus.CANCELED
    assert run.error == {"reason": "canceled", "message": "canceled by request"}
    assert mark(run, "term.json")["at"] >= asked - 0.01, "SIGTERM reached the script"
    assert took < GRACE, "the script exited at SIGTERM: no wait for the grace"
    assert run.record["ranks"]["0"]["exit_code"] == 0  # it saved and exited in the grace
    assert not containers(run.id)


@pytest.mark.docker
def test_cancel_kills_a_script_that_ignores_sigterm_after_the_grace(
    image: BuiltImage, tmp_path: Path
) -> None:
    src = write_script(tmp_path / "src", TRAPS)
    run = in_image(image, src, script_params=["ignore"]).fit(wait=False)
    mark(run, "ready.json")
    run.cancel()
    run.wait_for_completion(raise_on_error=False)
    ended = time.time()
    termed = mark(run, "term.json")["at"]
    waited = ended - termed
    print(f"docker SIGKILL: run ended {waited:.2f} s after SIGTERM (grace {GRACE} s)")
    assert run.status is RunStatus.CANCELED
    assert waited >= GRACE - 0.5, "SIGKILL came before the grace was over"
    assert waited < GRACE + SLACK
    rank = run.record["ranks"]["0"]
    assert not rank["recorded"] or rank["signal"] == 9, rank
    assert not containers(run.id)


# ---------------------------------------------------------------------------------------------
# Hang timeout
# ---------------------------------------------------------------------------------------------
HANG = 2.0
HANGS = """\
import json, os, time
print("loading shard 7", flush=True)
with open(os.path.join(os.environ["FITDOCK_OUTPUT_DIR"], "quiet.json"), "w") as f:
    json.dump({"at": time.time()}, f)
time.sleep(300)
"""


@pytest.mark.docker
def test_a_silent_job_in_a_container_is_stopped_as_hung(image: BuiltImage, tmp_path: Path) -> None:
    run = in_image(image, write_script(tmp_path / "src", HANGS), hang_timeout_seconds=HANG).fit()
    returned = time.time()
    went_quiet = json.loads((run.output_dir / "quiet.json").read_text())["at"]
    stopped_after = returned - went_quiet
    print(f"docker hang: stopped {stopped_after:.2f} s after the job went quiet ({HANG} s)")
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error["reason"] == "hung", run.error
    assert run.error["last_lines"] == {"0": "loading shard 7"}
    assert stopped_after >= HANG - 0.3
    assert stopped_after < HANG + FAIL_FAST_GRACE + SLACK
    assert not containers(run.id)


# ---------------------------------------------------------------------------------------------
# Inputs, shm_size, variables
# ---------------------------------------------------------------------------------------------
WRITES_INPUTS = """\
import json, os
data = os.environ["FITDOCK_INPUT_DATA"]
seen = {"read": open(os.path.join(data, "rows.csv")).read(), "errors": {}}
def attempt(name, action):
    try:
        action()
        seen["errors"][name] = None
    except OSError as exc:
        seen["errors"][name] = exc.errno
attempt("create", lambda: open(os.path.join(data, "new.csv"), "w").write("x"))
attempt("append", lambda: open(os.path.join(data, "rows.csv"), "a").write("x"))
attempt("delete", lambda: os.remove(os.path.join(data, "rows.csv")))
attempt("chmod", lambda: os.chmod(os.path.join(data, "rows.csv"), 0o777))
with open(os.path.join(os.environ["FITDOCK_OUTPUT_DIR"], "inputs.json"), "w") as f:
    json.dump(seen, f)
"""


@pytest.mark.docker
def test_inputs_are_read_only_inside_the_container(image: BuiltImage, tmp_path: Path) -> None:
    """The container runs as the caller (root in CI, who ignores mode bits): only the
    read-only mount can refuse these writes."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.csv").write_text("a,b\n1,2\n")
    mode = (data / "rows.csv").stat().st_mode
    src = write_script(tmp_path / "src", WRITES_INPUTS)
    run = in_image(image, src, inputs={"data": data}).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    seen = json.loads((run.output_dir / "inputs.json").read_text())
    assert seen["read"] == "a,b\n1,2\n"
    assert seen["errors"] == dict.fromkeys(["create", "append", "delete", "chmod"], errno.EROFS)
    assert sorted(p.name for p in data.iterdir()) == ["rows.csv"]
    assert (data / "rows.csv").read_text() == "a,b\n1,2\n"
    assert (data / "rows.csv").stat().st_mode == mode


SHM = """\
import os
st = os.statvfs("/dev/shm")
with open(os.path.join(os.environ["FITDOCK_OUTPUT_DIR"], "shm.txt"), "w") as f:
    f.write(str(st.f_blocks * st.f_frsize))
"""


@pytest.mark.docker
@pytest.mark.parametrize(("shm_size", "expected"), [(None, 2 * 1024**3), ("96m", 96 * 1024**2)])
def test_shm_size_is_the_size_of_dev_shm(
    image: BuiltImage, tmp_path: Path, shm_size: str | None, expected: int
) -> None:
    """Azure's default of 2g when not given (Docker's own is 64 MB), else the given size."""
    run = in_image(image, write_script(tmp_path / "src", SHM), shm_size=shm_size).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    assert int((run.output_dir / "shm.txt").read_text()) == expected


DUMPS_ENV = """\
import json, os
with open(os.path.join(os.environ["FITDOCK_OUTPUT_DIR"], "env.json"), "w") as f:
    json.dump({**os.environ, "uid": os.getuid()}, f)
"""


@pytest.mark.docker
def test_the_jobs_variables_reach_the_container_and_nothing_else(
    image: BuiltImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values pass as they are (no shell between: quotes, ``$``, backticks, an empty
    value); the caller's own variables stay outside."""
    monkeypatch.setenv("HOST_ONLY_SECRET", "must-not-leak")
    tricky = "two words; $HOME `id` 'single' \"double\" \\ end"
    variables = {"GREETING": tricky, "EMPTY": "", "MULTI_LINE": "one\ntwo"}
    src = write_script(tmp_path / "src", DUMPS_ENV)
    run = in_image(image, src, environment_variables=variables).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    env = json.loads((run.output_dir / "env.json").read_text())
    assert {name: env.get(name) for name in variables} == variables
    assert "HOST_ONLY_SECRET" not in env
    assert env["FITDOCK_RUN_ID"] == env["AZUREML_RUN_ID"] == run.id
    assert env["FITDOCK_OUTPUT_DIR"] == str(run.output_dir)
    assert env["FITDOCK_ATTEMPT"] == "1"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("0", "1", "0")
    assert env["uid"] == os.getuid()


ATTEMPTS = """\
import os, sys
attempt = os.environ.get("FITDOCK_ATTEMPT")
with open(os.path.join(os.environ["FITDOCK_OUTPUT_DIR"], f"attempt-{attempt}"), "w") as f:
    f.write(attempt or "unset")
if attempt == "1":
    print("attempt 1: node lost", file=sys.stderr, flush=True)
    sys.exit(3)
"""


@pytest.mark.docker
def test_a_restarted_job_in_a_container_sees_its_attempt(image: BuiltImage, tmp_path: Path) -> None:
    """``FITDOCK_ATTEMPT`` is set after the plan, for each attempt: it must still reach the
    container (the script decides what to redo by it). And the restart must not meet the
    last attempt's container, which ``--rm`` removes a moment after it exits: the name
    would still be taken ("Conflict"), and the second attempt would fail to launch."""
    run = in_image(image, write_script(tmp_path / "src", ATTEMPTS), max_restarts=1).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    assert [a["outcome"] for a in run.record["attempts"]] == ["rank_failed", "completed"]
    assert sorted(p.name for p in run.output_dir.glob("attempt-*")) == ["attempt-1", "attempt-2"]
    assert not containers(run.id)


def test_gpus_are_asked_for_in_the_plan_with_use_gpu(tmp_path: Path) -> None:
    """Planned, not run: these machines have no GPU (``--gpus all`` fails here)."""
    src = write_script(tmp_path / "src", "print('x')\n")

    def argv(use_gpu: bool) -> list[str]:
        est = Estimator(
            src,
            entry_script="train.py",
            custom_docker_image="local/some-cuda-image:1",
            user_managed=True,
            use_docker=True,
            use_gpu=use_gpu,
        )
        (command,) = est.plan().commands
        return command

    with_gpu, without = argv(True), argv(False)
    image_at = with_gpu.index("local/some-cuda-image:1")
    assert with_gpu[with_gpu.index("--gpus") + 1] == "all"
    assert with_gpu.index("--gpus") < image_at, "docker's options come before the image"
    assert "--gpus" not in without
    assert len(with_gpu) == len(without) + 2  # nothing else changes (run ids aside)


# ---------------------------------------------------------------------------------------------
# An image built with an extra CA certificate
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def self_signed(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A fresh self-signed CA certificate (PEM file) and its subject's common name."""
    name = f"fitdock test CA {uuid.uuid4().hex[:12]}"
    cert, key = tmp_path / "fitdock-test-ca.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    yield cert, name


@pytest.mark.docker
@pytest.mark.timeout(900)  # builds the shared image first when it is cold
def test_an_extra_ca_certificate_lands_in_the_images_trust_store(
    image: BuiltImage, self_signed: tuple[Path, str]
) -> None:
    """An incremental build on the shared image (a few seconds): the certificate is copied
    in, ``update-ca-certificates`` adds it to the system bundle, and pip's and requests'
    variables point at that bundle; a changed certificate is a new build key."""
    import docker

    cert, name = self_signed
    env = Environment(
        python=PythonSection(pip_packages=["numpy"]),  # already there: pip installs nothing
        docker=DockerSection(base_image=image.tag),
        environment_variables={"FITDOCK_CA_TEST": uuid.uuid4().hex},  # a tag of its own
    )
    client = docker.from_env()
    try:
        extra = [*_host_cas(), cert]  # the host's (a TLS proxy's) too, as by default
        built = ensure_image(env, client=client, ca_certificates=extra, progress=False)
        try:
            assert built.built and built.tag == image_tag(env)
            check = (
                "import os, ssl, subprocess;"
                "bundle = '/etc/ssl/certs/ca-certificates.crt';"
                "print(os.environ['PIP_CERT'] == os.environ['SSL_CERT_FILE'] == bundle);"
                "ctx = ssl.create_default_context(cafile=bundle);"
                "print(sorted(dict(x[0] for x in c['subject']).get('commonName', '')"
                " for c in ctx.get_ca_certs()))"
            )
            out = client.containers.run(built.tag, ["python", "-c", check], remove=True)
            same_bundle, subjects = out.decode().splitlines()
            assert same_bundle == "True"
            assert name in subjects, "the certificate is not in the image's trust store"
            listing = client.containers.run(
                built.tag, ["ls", "/usr/local/share/ca-certificates"], remove=True
            )
            assert f"{cert.stem}.crt" in listing.decode().split()
        finally:
            client.images.remove(built.tag, force=True)
    finally:
        client.close()


def _host_cas() -> list[Path]:
    from fitdock.environments.dockerfile import default_ca_certificates

    return default_ca_certificates()
