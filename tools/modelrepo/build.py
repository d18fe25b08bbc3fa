"""Building one model directory: cached by fingerprint, built aside under a hidden name, verified, swapped in.

A directory is built under a hidden temporary name in the repository and renamed into place, so an interrupted
build never leaves half a model; the server never serves dot-entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from service.engine.manifest import MODEL_FILE, TOKENIZER_FILE, ManifestError, ModelManifest
from tools.modelrepo import verify
from tools.modelrepo.common import TOOL_NAME, TOOL_VERSION, BuildError, say
from tools.modelrepo.export import (
    OPSET,
    export_onnx,
    load_reference_tokenizer,
    load_torch_model,
    model_files,
    sliding_window,
    write_dense,
    write_tokenizer,
)
from tools.modelrepo.fuse import SOLO_GRAPH_FILE, AttentionShape, fuse, solo_graph
from tools.modelrepo.quantize import PRECISIONS, convert_fp16, quantize_int8
from tools.modelrepo.sources import Source, digest


@dataclass(frozen=True)
class Target:
    """A model directory to build, identified without its source: a finished build is recognised (and skipped)
    before anything is read or downloaded."""

    id: str
    precision: str
    identity: dict[str, Any]  # what the source is made of (hashes of its files, or of the packages that hold it)
    request: dict[str, Any] = field(default_factory=dict)  # everything asked of the build besides the source

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise BuildError(f"precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")

    @property
    def fingerprint(self) -> str:
        return digest(
            {
                "tool_version": TOOL_VERSION,
                "identity": self.identity,
                "request": self.request,
                "precision": self.precision,
            }
        )

    def is_built_in(self, repo: Path) -> bool:
        model_dir = repo / self.id
        try:
            manifest = ModelManifest.load(model_dir)
        except ManifestError:
            return False
        complete = (model_dir / MODEL_FILE).is_file() and (model_dir / TOKENIZER_FILE).is_file()
        return complete and manifest.provenance.get("fingerprint") == self.fingerprint


@contextlib.contextmanager
def repo_lock(repo: Path) -> Iterator[None]:
    """Serialize builders of one repository (e.g. parallel test sessions), so cache checks and swaps don't race."""
    repo.mkdir(parents=True, exist_ok=True)
    with (repo / ".modelrepo.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def place(work: Path, target: Path) -> None:
    """Swap a finished build into place by rename; the old version is renamed aside first, then removed."""
    _fsync_tree(work)
    work.chmod(0o755)
    old = target.with_name(f".old-{target.name}-{os.getpid()}")
    if target.exists():
        os.rename(target, old)
    os.rename(work, target)
    if old.exists():
        shutil.rmtree(old)


def _versions() -> dict[str, str]:
    found = {}
    for package in (
        "torch",
        "transformers",
        "sentence-transformers",
        "onnx",
        "onnxruntime-gpu",
        "onnxruntime",
        "tokenizers",
    ):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def build_model(
    target: Target,
    source: Source,
    manifest: ModelManifest,
    repo: Path,
    *,
    force: bool = False,
    fp32_dir: Path | None = None,
) -> Path:
    """Build one model directory unless an identical build is already there; returns the directory.

    For int8 and fp16, `fp32_dir` reuses an already verified fp32 build instead of exporting again.
    """
    destination = repo / target.id
    if not force and target.is_built_in(repo):
        say(f"{target.id}: up to date (fingerprint {target.fingerprint[:12]}), skipped")
        return destination
    say(f"{target.id}: building {target.precision} from {manifest.provenance.get('source')}")
    started = time.monotonic()
    repo.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{target.id}-", dir=repo))
    try:
        manifest, record = _build_into(work, target.precision, source, manifest, fp32_dir)
        provenance = {
            **manifest.provenance,
            "source_sha256": source.weight_hashes,
            "fingerprint": target.fingerprint,
            "precision": target.precision,
            "opset": OPSET,
            "tool": TOOL_NAME,
            "tool_version": TOOL_VERSION,
            "built_with": _versions(),
            **record,
        }
        replace(manifest, provenance=provenance).save(work)
        place(work, destination)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = sum(p.stat().st_size for p in model_files(destination)) / 1e6
    say(f"{target.id}: built in {time.monotonic() - started:.1f}s ({size:.1f} MB) -> {destination}")
    return destination


def _build_into(
    work: Path, precision: str, source: Source, manifest: ModelManifest, fp32_dir: Path | None
) -> tuple[ModelManifest, dict[str, Any]]:
    """Write and verify every file of the model in `work`; returns the final manifest and the build record."""
    tokenizer_path = work / TOKENIZER_FILE
    write_tokenizer(source, tokenizer_path)
    verify.check_tokenizer(source, load_reference_tokenizer(source), tokenizer_path, manifest.max_input_tokens)
    manifest = replace(manifest, dense=write_dense(source, work), architecture=source.architecture)
    record: dict[str, Any] = {}
    if precision == "fp32" or fp32_dir is None:
        fp32_path = work / MODEL_FILE if precision == "fp32" else work / "fp32" / MODEL_FILE
        fp32_path.parent.mkdir(exist_ok=True)
        model = load_torch_model(source)
        exported = export_onnx(model, fp32_path, verify.sample_batch(tokenizer_path, manifest.max_input_tokens))
        record["attention"] = "causal" if exported.causal else "bidirectional"
        shape = AttentionShape.of(model, exported.causal, sliding_window(model) is not None)
        checks = [
            verify.against_torch(model, exported.input_names, fp32_path, tokenizer_path, manifest.max_input_tokens),
            verify.against_sentence_transformers(source, fp32_path, work, manifest),
        ]
        del model
        if precision == "fp32":
            manifest, record["solo_graph"] = _write_solo_graph(work, manifest, shape)
    else:
        fp32_path = fp32_dir / MODEL_FILE
        checks = []
        record["attention"] = ModelManifest.load(fp32_dir).provenance.get("attention", "")
    if precision == "int8":
        feeds = verify.verification_feeds(tokenizer_path, manifest.max_input_tokens)
        for keep_outliers in (False, True):
            record["quantization"] = quantize_int8(fp32_path, work / MODEL_FILE, feeds, keep_outliers)
            check = verify.against_fp32(work / MODEL_FILE, fp32_path, work, manifest, "int8", None)
            if check["min_cosine"] >= verify.INT8_MIN_COSINE:
                break
            say(f"  int8 strays from fp32 (min cosine {check['min_cosine']:.4f} < {verify.INT8_MIN_COSINE})")
        checks.append(check)
    elif precision == "fp16":
        record["conversion"] = convert_fp16(fp32_path, work / MODEL_FILE)
        checks.append(verify.against_fp32(work / MODEL_FILE, fp32_path, work, manifest, "fp16", verify.FP16_MIN_COSINE))
    shutil.rmtree(work / "fp32", ignore_errors=True)
    record["verification"] = checks
    if not (work / MODEL_FILE).is_file():
        raise BuildError(f"{manifest.id}: no {MODEL_FILE} was written")
    return manifest, record


def _write_solo_graph(work: Path, manifest: ModelManifest, shape: AttentionShape) -> tuple[ModelManifest, dict]:
    """The fused graph for small batches that run alone (tools/modelrepo/fuse.py), kept only when every layer
    fused and it gives the plain graph's vectors; otherwise the plain graph serves every batch, as before."""
    fused = work / SOLO_GRAPH_FILE
    try:
        record = fuse(work / MODEL_FILE, fused, shape)
        record["verification"] = verify.against_plain(fused, work / MODEL_FILE, work, manifest)
    except BuildError as exc:
        fused.unlink(missing_ok=True)
        say(f"  no solo graph: {exc}")
        return manifest, {"kept": False, "reason": str(exc)}
    solo = solo_graph()
    say(f"  solo graph {solo.file}: lone batches up to {solo.max_inputs} input(s), {solo.max_tokens} tokens")
    return replace(manifest, solo_graph=solo), record
