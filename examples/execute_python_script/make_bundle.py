"""Zip ``bundle/`` into ``Hello.zip``: the script bundle of ``hello.py`` (Azure's third
input port). The zip holds ``Hello.py`` at its top, so the script can ``import Hello``.

    python make_bundle.py               # writes ./Hello.zip
    python make_bundle.py /tmp/bundles  # writes /tmp/bundles/Hello.zip

``run_hello.py`` builds it in a temporary folder itself, so the repository holds text only.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent / "bundle"


def build(folder: Path) -> Path:
    """Write ``folder/Hello.zip`` from the files of ``bundle/``; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "Hello.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(BUNDLE.rglob("*.py")):
            archive.write(path, path.relative_to(BUNDLE).as_posix())
    return target


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
