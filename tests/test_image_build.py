"""Real image builds on the Docker engine, FROM the local ``local/debian:bookworm`` base
(scripts/install-docker.sh makes it: no registry is reachable). The numpy + mpi4py + MPICH
image is built once per module (a minute or two when cold, a cache hit afterwards); the
other tests add cheap layers on top of its cached ones."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fitdock.environments.dockerfile import BuildTier
from fitdock.environments.image import BuiltImage, ensure_image, image_tag
from fitdock.environments.spec import DockerSection, Environment, Platform, PythonSection
from fitdock.errors import ImageBuildError

pytestmark = pytest.mark.docker

BASE = "local/debian:bookworm"
FITDOCK_SRC = Path(__file__).resolve().parents[1] / "fitdock"


def cpu_env(*extra_pip: str, **variables: str) -> Environment:
    return Environment(
        name="test-cpu-numpy-mpi",
        python=PythonSection(
            python_version="3.11", pip_packages=["numpy", "mpi4py>=4", "mpich>=4", *extra_pip]
        ),
        platform=Platform(os="Debian 12", mpi="MPICH 4 (PyPI)"),
        environment_variables=variables,
    )


def bare_env(**variables: str) -> Environment:
    """Python and nothing else: shares the cached apt and venv layers of ``cpu_env``."""
    return Environment(
        name="test-bare",
        python=PythonSection(python_version="3.11"),
        environment_variables=variables,
    )


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    import docker

    engine = docker.from_env()
    try:
        engine.images.get(BASE)
    except docker.errors.ImageNotFound:
        # a skip here; with CI=true the CI guard of conftest.py makes it a failure
        pytest.skip(f"no {BASE} image: run scripts/install-docker.sh")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def cpu_image(client: Any, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    home = tmp_path_factory.mktemp("fitdock-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FITDOCK_HOME", str(home))
        built = ensure_image(cpu_env(), base_image=BASE, client=client, progress=False)
    print(f"cpu image {built.tag}: built={built.built} in {built.seconds:.1f} s")
    return built


@pytest.fixture
def throwaway(client: Any) -> Iterator[list[str]]:
    """Tags to remove after the test (images of one-off environments)."""
    tags: list[str] = []
    yield tags
    for tag in tags:
        with contextlib.suppress(Exception):  # best-effort cleanup
            client.images.remove(tag, force=True)


def run_in(client: Any, tag: str, command: list[str], **kwargs: Any) -> str:
    output = client.containers.run(tag, command, remove=True, stderr=True, **kwargs)
    return str(output.decode())


@pytest.mark.timeout(900)
def test_numpy_and_mpi4py_import_in_the_image(client: Any, cpu_image: BuiltImage) -> None:
    assert cpu_image.tag == image_tag(cpu_env())
    code = "import numpy, mpi4py, os; print(numpy.__version__, mpi4py.__version__, os.getuid())"
    numpy_version, mpi4py_version, uid = run_in(
        client, cpu_image.tag, ["python", "-c", code]
    ).split()
    assert numpy_version[0].isdigit() and mpi4py_version.startswith("4.")
    assert uid == "1000"  # the fitdock user


def test_mpiexec_runs_two_ranks_inside_the_image(client: Any, cpu_image: BuiltImage) -> None:
    code = (
        "import sys; from mpi4py import MPI; c = MPI.COMM_WORLD; "
        "sys.stdout.write(f'rank {c.rank}/{c.size} sum {c.allreduce(c.rank + 1)}\\n')"
    )
    out = run_in(client, cpu_image.tag, ["mpiexec", "-n", "2", "python", "-c", code])
    assert sorted(out.splitlines()) == ["rank 0/2 sum 3", "rank 1/2 sum 3"], out


def test_fitdock_is_importable_from_a_read_only_mount(client: Any, cpu_image: BuiltImage) -> None:
    mount = {str(FITDOCK_SRC): {"bind": "/opt/fitdock/src/fitdock", "mode": "ro"}}
    out = run_in(
        client,
        cpu_image.tag,
        ["python", "-c", "from fitdock import Run; print(Run.__name__)"],
        volumes=mount,
        environment={"PYTHONPATH": "/opt/fitdock/src"},
    )
    assert out.strip() == "Run"


def test_second_ensure_is_a_fast_cache_hit(client: Any, cpu_image: BuiltImage) -> None:
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        again = ensure_image(cpu_env(), base_image=BASE, client=client)
        seconds.append(time.perf_counter() - start)
        assert not again.built and again.tag == cpu_image.tag and again.layers_built == 0
    print(f"cache hit: {min(seconds) * 1000:.1f} ms (best of 3)")
    # a hit, not a build (which takes many seconds); bench/bench_envs.py line (h) measures
    # its cost against its 100 ms target, which a loaded 2-core machine could break here
    assert min(seconds) < 2.0


def test_a_failing_pip_install_names_the_run_step(
    client: Any, cpu_image: BuiltImage, tmp_path: Path, throwaway: list[str]
) -> None:
    missing = f"fitdock-no-such-package-{uuid.uuid4().hex[:8]}"
    env = cpu_env(missing)
    throwaway.append(image_tag(env))
    log = tmp_path / "build.log"
    with pytest.raises(ImageBuildError) as caught:
        ensure_image(env, base_image=BASE, client=client, log=log, progress=False)
    error = caught.value
    assert error.step is not None and error.step.startswith("RUN") and "pip install" in error.step
    assert "failed at step" in str(error) and str(log) in str(error)
    assert any(missing in line for line in error.tail), error.tail
    assert log.is_file() and missing in log.read_text()


def test_a_missing_base_image_says_how_to_get_one(client: Any) -> None:
    env = bare_env()
    with pytest.raises(ImageBuildError, match=r"install-docker\.sh") as caught:
        ensure_image(env, base_image="local/no-such-base:1", client=client, progress=False)
    assert caught.value.step == "FROM local/no-such-base:1"


def test_concurrent_ensures_of_a_cold_env_build_once(
    cpu_image: BuiltImage, throwaway: list[str]
) -> None:
    env = bare_env(FITDOCK_TEST_TOKEN=uuid.uuid4().hex)
    throwaway.append(image_tag(env))
    results: list[BuiltImage] = []
    errors: list[BaseException] = []

    def ensure() -> None:
        try:
            results.append(ensure_image(env, base_image=BASE, progress=False))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ensure) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    assert len(results) == 4 and {r.tag for r in results} == {image_tag(env)}
    built = [r for r in results if r.built]
    assert len(built) == 1
    # Only the layers after the new variable are rebuilt: apt and the venv come from cache.
    assert 1 <= built[0].layers_built <= 5, built[0]


def test_a_custom_image_with_packages_builds_on_top_of_it(
    client: Any, cpu_image: BuiltImage, throwaway: list[str]
) -> None:
    """The CPU image stands in for a user's custom image: ``six`` goes into its Python,
    next to its numpy, and its user (fitdock) is restored."""
    env = Environment(
        python=PythonSection(pip_packages=["six"]),
        docker=DockerSection(base_image=cpu_image.tag),
    )
    built = ensure_image(env, client=client, progress=False)
    throwaway.append(built.tag)
    assert built.built and built.tier is BuildTier.INCREMENTAL and built.tag == image_tag(env)
    code = "import numpy, six, os; print(six.__name__, os.getuid())"
    assert run_in(client, built.tag, ["python", "-c", code]).split() == ["six", "1000"]


def test_a_custom_image_without_packages_is_used_as_it_is(
    client: Any, cpu_image: BuiltImage
) -> None:
    env = Environment(docker=DockerSection(base_image=cpu_image.tag))
    used = ensure_image(env, client=client, progress=False)
    assert used.tag == cpu_image.tag and not used.built and used.tier is BuildTier.AS_IS
