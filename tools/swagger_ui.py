"""Build step: copy the files of npm's swagger-ui-dist that GET /docs serves into the package
(`service/console/swagger-ui/`, service/assets.py), so a wheel ships them: `python -m tools.swagger_ui DIST_DIR`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from service import assets
from service.console import SWAGGER_UI_FILES


def install(dist: Path, dest: Path = assets.SWAGGER_UI) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in SWAGGER_UI_FILES:
        shutil.copyfile(dist / name, dest / name)


if __name__ == "__main__":
    install(Path(sys.argv[1]))
