"""``fitdock images build|dockerfile``: an environment's Docker image and its Dockerfile."""

from __future__ import annotations

import argparse

from fitdock.cli.env import REF_HELP, load_environment


def add(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fitdock images`` and its actions."""
    images = subparsers.add_parser("images", help="framework images", description="Docker images.")
    actions = images.add_subparsers(dest="images_command", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="build an environment's image (once per hash)")
    build.add_argument("ref", help=REF_HELP)
    build.add_argument("--base", metavar="IMAGE", help="replace the curated base image")
    build.set_defaults(func=cmd_build)
    show = actions.add_parser("dockerfile", help="print the Dockerfile an environment renders to")
    show.add_argument("ref", help=REF_HELP)
    show.add_argument("--base", metavar="IMAGE", help="replace the curated base image")
    show.set_defaults(func=cmd_dockerfile)


def cmd_build(ns: argparse.Namespace) -> int:
    from fitdock.environments.image import ensure_image

    built = ensure_image(load_environment(ns.ref), base_image=ns.base)
    state = "built" if built.built else "cached"
    print(f"{state}: {built.tag} ({built.seconds:.2f} s, {built.layers_built} layers built)")
    return 0


def cmd_dockerfile(ns: argparse.Namespace) -> int:
    from fitdock.environments.dockerfile import default_ca_certificates, render

    build = render(
        load_environment(ns.ref), base_image=ns.base, ca_certificates=default_ca_certificates()
    )
    print(build.dockerfile, end="")
    return 0
