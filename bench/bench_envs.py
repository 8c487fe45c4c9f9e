"""Environment builds: the cost of a cache hit, and a cold build against uv by hand.

    python bench/bench_envs.py [--repeat N] [--no-docker]

(g) a second fit() on a cached virtualenv: time spent resolving and checking the cache
    (ensure_venv of a built environment), target <= 100 ms;
(h) the same for a cached image (ensure_image), target <= 100 ms and 0 layers rebuilt
    (skipped without a Docker engine or the local base image);
(i) a cold virtualenv build of the Chainer example's environment (chainer-7.8.1-cpu)
    against the same `uv venv` + `uv pip install` by hand, both with uv's download cache
    warm, target <= 1.10x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fitdock.environments.catalogue import load_catalogue
from fitdock.environments.spec import Environment
from fitdock.environments.uvtool import FitdockSource, find_interpreter, uv_binary, uv_environ
from fitdock.environments.venv import ensure_venv

BASE = "local/debian:bookworm"


def verdict(value: float, target: float) -> str:
    return "OK" if value <= target else "MISS"


def cached_venv(env: Environment, repeat: int) -> None:
    ensure_venv(env)  # built once (or already)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        built = ensure_venv(env)
        samples.append(time.perf_counter() - start)
        assert not built.built
    ms = statistics.median(samples) * 1000
    ok = verdict(ms, 100)
    print(f"bench (g) cached venv: resolve + cache check {ms:.1f} ms (target <= 100 ms) {ok}")


def cached_image(env: Environment, repeat: int) -> None:
    try:
        from fitdock.environments.image import docker_client, ensure_image

        client = docker_client()
        client.images.get(BASE)
    except Exception as exc:  # no engine, no base image: say so, as a benchmark does
        print(f"bench (h) skipped: {exc}")
        return
    ensure_image(env, base_image=BASE, progress=False, client=client)
    samples, layers = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        built = ensure_image(env, base_image=BASE, progress=False, client=client)
        samples.append(time.perf_counter() - start)
        layers.append(built.layers_built)
    ms = statistics.median(samples) * 1000
    print(
        f"bench (h) cached image: resolve + cache check {ms:.1f} ms, layers rebuilt {max(layers)} "
        f"(target <= 100 ms and 0) {verdict(ms, 100) if max(layers) == 0 else 'MISS'}"
    )


def by_hand(env: Environment, where: Path) -> float:
    """`uv venv` + `uv pip install` of the same packages (fitdock included), timed."""
    uv, environ = uv_binary(), uv_environ()
    constraints = where / "build-constraints.txt"
    constraints.write_text("\n".join(env.python.build_constraints) + "\n")
    python = find_interpreter(env.python.python_version)
    source = FitdockSource.running()
    assert source.checkout is not None, "run the benchmark from a fitdock checkout"
    start = time.perf_counter()
    subprocess.run(
        [uv, "venv", "--python", str(python), str(where / "venv")],
        env=environ,
        check=True,
        capture_output=True,
    )
    install = [uv, "pip", "install", "--python", str(where / "venv" / "bin" / "python")]
    install += [
        "--build-constraint",
        str(constraints),
        *env.python.pip_packages,
        "-e",
        str(source.checkout),
    ]
    subprocess.run(install, env=environ, check=True, capture_output=True, cwd=where)
    return time.perf_counter() - start


def cold_venv(env: Environment, repeat: int) -> None:
    ours, theirs = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as scratch:
            home = Path(scratch) / "home"
            start = time.perf_counter()
            built = ensure_venv(env, home=home)
            ours.append(time.perf_counter() - start)
            assert built.built
            theirs.append(by_hand(env, Path(scratch)))
    fd, raw = statistics.median(ours), statistics.median(theirs)
    ratio = fd / raw
    print(
        f"bench (i) cold venv build of chainer-7.8.1-cpu: fitdock {fd:.2f} s, uv by hand "
        f"{raw:.2f} s, ratio {ratio:.3f}x (target <= 1.10x) {verdict(ratio, 1.10)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-docker", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as home:
        os.environ["FITDOCK_HOME"] = home
        env = load_catalogue().get("chainer-7.8.1-cpu").to_environment()
        env.python.user_managed_dependencies = False
        cold_venv(env, max(1, args.repeat // 2))
        cached_venv(env, args.repeat)
        small = Environment(name="bench-image", python={"pip_packages": ["six==1.16.0"]})
        if not args.no_docker:
            cached_image(small, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
