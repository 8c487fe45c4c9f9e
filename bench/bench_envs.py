"""Environment builds: the cost of a cache hit, and a cold build against uv by hand.

    python bench/bench_envs.py [--repeat N] [--no-docker] [--json PATH]

(g) a second fit() on a cached virtualenv: time spent resolving and checking the cache
    (ensure_venv of a built environment), target < 1 ms (the README: "well under a
    millisecond");
(h) the same for a cached image (ensure_image), target <= 100 ms and 0 layers rebuilt
    (skipped without a Docker engine or the local base image);
(i) a new virtualenv of the Chainer example's environment (chainer-7.8.1-cpu) built by
    fitdock against the same `uv venv` + `uv pip install` by hand. Both sides first build it
    once, unmeasured, so uv's download and wheel cache is warm for both; then N rounds, each
    building one venv per side, the side that goes first alternating; medians of N samples
    each. Target <= 1.10x.
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

from _common import Report, machine

from fitdock.environments.catalogue import load_catalogue
from fitdock.environments.spec import Environment
from fitdock.environments.uvtool import FitdockSource, find_interpreter, uv_binary, uv_environ
from fitdock.environments.venv import ensure_venv

BASE = "local/debian:bookworm"
TARGET_CACHED_VENV_MS = 1.0
TARGET_CACHED_IMAGE_MS = 100.0
TARGET_COLD_RATIO = 1.10


def cached_venv(env: Environment, repeat: int, report: Report) -> None:
    ensure_venv(env)  # built once (or already)
    samples = []
    for _ in range(max(repeat, 20)):  # sub-millisecond: more samples cost nothing
        start = time.perf_counter()
        built = ensure_venv(env)
        samples.append(time.perf_counter() - start)
        assert not built.built
    ms = statistics.median(samples) * 1000
    ok = report.verdict("g_cached_venv_ms", ms, TARGET_CACHED_VENV_MS)
    report.data["g_samples_ms"] = [x * 1000 for x in samples]
    report.emit(
        f"bench (g) cached venv: resolve + cache check {ms:.3f} ms "
        f"(target < {TARGET_CACHED_VENV_MS:g} ms) {ok}"
    )


def cached_image(env: Environment, repeat: int, report: Report) -> None:
    try:
        from fitdock.environments.image import docker_client, ensure_image

        client = docker_client()
        client.images.get(BASE)
    except Exception as exc:  # no engine, no base image: say so, as a benchmark does
        report.emit(f"bench (h) skipped: {exc}")
        return
    ensure_image(env, base_image=BASE, progress=False, client=client)
    samples, layers = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        built = ensure_image(env, base_image=BASE, progress=False, client=client)
        samples.append(time.perf_counter() - start)
        layers.append(built.layers_built)
    ms = statistics.median(samples) * 1000
    ok = report.verdict("h_cached_image_ms", ms, TARGET_CACHED_IMAGE_MS)
    if max(layers) != 0:
        ok = "MISS"
        report.data["checks"]["h_cached_image_ms"]["ok"] = False
    report.data["h_layers_rebuilt"] = max(layers)
    report.emit(
        f"bench (h) cached image: resolve + cache check {ms:.1f} ms, layers rebuilt {max(layers)} "
        f"(target <= {TARGET_CACHED_IMAGE_MS:g} ms and 0) {ok}"
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


def fitdock_build(env: Environment, scratch: Path) -> float:
    start = time.perf_counter()
    built = ensure_venv(env, home=scratch / "home")
    seconds = time.perf_counter() - start
    assert built.built
    return seconds


def cold_venv(env: Environment, repeat: int, report: Report) -> None:
    sides = {"fitdock": fitdock_build, "by_hand": by_hand}
    with tempfile.TemporaryDirectory() as scratch:  # warm uv's cache for both, unmeasured
        for name, build in sides.items():
            (Path(scratch) / name).mkdir()
            build(env, Path(scratch) / name)
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(repeat):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        for name in order:
            with tempfile.TemporaryDirectory() as scratch:
                samples[name].append(sides[name](env, Path(scratch)))
    fd, raw = statistics.median(samples["fitdock"]), statistics.median(samples["by_hand"])
    ratio = fd / raw
    ok = report.verdict("i_cold_venv_ratio", ratio, TARGET_COLD_RATIO)
    report.data["i_samples_s"] = samples
    report.emit(
        f"bench (i) new venv of chainer-7.8.1-cpu, uv's cache warm for both, {repeat} rounds "
        f"in alternating order: fitdock {fd:.2f} s, uv by hand {raw:.2f} s, ratio {ratio:.3f}x "
        f"(target <= {TARGET_COLD_RATIO:.2f}x) {ok}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-docker", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    json_path = args.json.resolve() if args.json else None
    report = Report(data={"repeat": args.repeat})
    with tempfile.TemporaryDirectory() as home:
        os.environ["FITDOCK_HOME"] = home
        env = load_catalogue().get("chainer-7.8.1-cpu").to_environment()
        env.python.user_managed_dependencies = False
        cold_venv(env, args.repeat, report)
        cached_venv(env, args.repeat, report)
        small = Environment(name="bench-image", python={"pip_packages": ["six==1.16.0"]})
        if not args.no_docker:
            cached_image(small, args.repeat, report)
    report.finish(json_path, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
