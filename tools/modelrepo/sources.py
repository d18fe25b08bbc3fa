"""Reading a source directory: what a sentence-transformers or plain Hugging Face model declares.

Only JSON files are read here, so a source the server cannot serve is refused before torch is imported. A
sentence-transformers pipeline is accepted when every module is plain math the engine applies itself:
Transformer -> Pooling (any mode or modes, with or without the prompt) -> Dense ... -> Normalize, with Dropout
(a no-op at inference) anywhere after the Transformer. Anything else is refused with the module's name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from service.engine.manifest import TOKENIZER_FILE, ModelManifest
from service.engine.pooling import ACTIVATIONS, POOLING_MODES, POOLING_SEPARATOR
from service.fields import derive
from tools.modelrepo.common import BuildError, load_json, optional_json, sha256_file

UNLIMITED_TOKENS = 1_000_000  # tokenizer configs say 1e30 for "no limit"; treat anything this big as unset
INFERRED_TOKENS_CAP = 8192  # when only the position embeddings bound the length; attention cost grows as n^2
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
FINGERPRINT_SUFFIXES = (*WEIGHT_SUFFIXES, ".json", ".txt", ".model")
# Legacy Pooling config keys, in the order sentence-transformers concatenates their vectors.
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Model types whose position ids start after the padding index (RoBERTa's scheme): two positions fewer.
PADDING_OFFSET_POSITIONS = ("camembert", "mpnet", "data2vec-text", "xmod", "longformer", "ibert")
# sentence-transformers prompt names, by the API input type they serve (first found wins, as in encode_document).
PROMPT_NAMES = {"query": ("query",), "document": ("document", "passage", "corpus")}
DEFAULT_DENSE_ACTIVATION = "torch.nn.modules.activation.Tanh"  # sentence-transformers' Dense default
MODULE_OUTPUT = "sentence_embedding"


@dataclass(frozen=True)
class SourceDense:
    """A Dense module of the source: its directory (weights, config) and what it computes."""

    path: Path
    in_features: int
    out_features: int
    activation: str
    bias: bool
    residual: bool


@dataclass(frozen=True)
class Source:
    """What a source directory declares, read from its JSON files alone (no torch needed to reject a bad one)."""

    root: Path
    model_dir: Path  # holds config.json and the weights: the sentence-transformers Transformer module's path
    kind: str  # "sentence-transformers" or "huggingface"
    architecture: str  # config.json model_type
    hidden_size: int
    max_input_tokens: int
    position_limit: int | None
    license: str | None
    file_hashes: dict[str, str]  # relative path -> sha256, for everything that can change the built model
    pooling: str = "mean"
    include_prompt: bool = True
    dense: tuple[SourceDense, ...] = ()
    normalize: bool = True
    lowercase: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str = ""

    @property
    def dimensions(self) -> int:
        if self.dense:
            return self.dense[-1].out_features
        return self.hidden_size * len(self.pooling.split(POOLING_SEPARATOR))

    def manifest(self, **given: Any) -> ModelManifest:
        """The manifest as the source declares it (the fields the two share, and its dimensions) with `given` (id,
        owner, provenance ...); the build writes its dense layers."""
        return derive(ModelManifest, self, dimensions=self.dimensions, dense=(), **given)

    @property
    def weight_hashes(self) -> dict[str, str]:
        return {name: digest for name, digest in self.file_hashes.items() if name.endswith(WEIGHT_SUFFIXES)}

    def describe(self) -> str:
        dense = "".join(f" -> Dense({d.in_features}->{d.out_features}, {d.activation})" for d in self.dense)
        prompt = "" if self.include_prompt else " (prompt excluded)"
        extras = (["lower-cased"] if self.lowercase else []) + (
            [f"prompts {', '.join(self.prompts)}"] * bool(self.prompts)
        )
        return (
            f"{self.kind} {self.architecture} model: {self.pooling} pooling{prompt}{dense}"
            f"{' -> Normalize' if self.normalize else ''}, {self.dimensions} dims, max {self.max_input_tokens} tokens"
            + "".join(f", {extra}" for extra in extras)
        )


def read_source(root: Path) -> Source:
    """Classify SRC as a sentence-transformers or a plain Hugging Face directory and read what it declares."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise BuildError(f"{root}: not a directory")
    if (root / "modules.json").is_file():
        return _read_sentence_transformers(root)
    if (root / "config.json").is_file():
        return _read_model_dir(root, root, kind="huggingface", declared_max=None)
    raise BuildError(
        f"{root}: neither a sentence-transformers directory (modules.json) nor a Hugging Face model (config.json)"
    )


def _module_kind(module: dict[str, Any]) -> str:
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def _refuse(root: Path, module: dict[str, Any], why: str) -> BuildError:
    return BuildError(
        f"{root}: module {module.get('type')!r} ({module.get('path') or 'root'}, position {module.get('idx')}) "
        f"is not supported: {why}. The server applies Transformer -> Pooling -> Dense ... -> optional Normalize"
    )


def _read_sentence_transformers(root: Path) -> Source:
    modules = load_json(root / "modules.json")
    if not isinstance(modules, list):
        raise BuildError(f"{root / 'modules.json'}: expected a list of modules")
    transformer: Path | None = None
    pooling: dict[str, Any] | None = None
    dense: list[SourceDense] = []
    normalize = False
    for module in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind, path = _module_kind(module), root / module.get("path", "")
        if kind == "Transformer" and transformer is None:
            transformer = path
        elif kind == "Dropout" and transformer is not None:
            continue  # identity at inference
        elif kind == "Pooling" and transformer is not None and pooling is None:
            pooling = {**load_json(path / "config.json"), "_where": path / "config.json"}
        elif kind == "Dense" and pooling is not None and not normalize:
            dense.append(_read_dense(root, module, path))
        elif kind == "Normalize" and pooling is not None and not normalize:
            normalize = True
        elif kind in ("Transformer", "Pooling", "Dense", "Normalize"):
            raise _refuse(root, module, "it is out of order or repeated")
        else:
            raise _refuse(root, module, f"{kind or 'this module'} is not plain math the engine applies")
    if transformer is None or pooling is None:
        raise BuildError(f"{root}: modules.json needs a Transformer module followed by a Pooling module")
    sbert = optional_json(transformer / "sentence_bert_config.json")
    _check_transformer_config(transformer / "sentence_bert_config.json", sbert)
    source = _read_model_dir(root, transformer, kind="sentence-transformers", declared_max=sbert.get("max_seq_length"))
    modes, include_prompt = pooling_modes(pooling, pooling["_where"])
    pooled_dim = pooling.get("embedding_dimension", pooling.get("word_embedding_dimension"))
    if pooled_dim is not None and int(pooled_dim) != source.hidden_size:
        raise BuildError(
            f"{pooling['_where']}: pooling dimension {pooled_dim} != model hidden size {source.hidden_size}"
        )
    source = replace(
        source,
        pooling=POOLING_SEPARATOR.join(modes),
        include_prompt=include_prompt,
        dense=tuple(dense),
        normalize=normalize,
        lowercase=bool(sbert.get("do_lower_case", False)),
        **_read_prompts(root / "config_sentence_transformers.json"),
    )
    _check_dense_chain(source)
    return source


def _check_transformer_config(where: Path, sbert: dict[str, Any]) -> None:
    """The engine feeds plain text to the tokenizer and reads token embeddings: nothing else may be configured."""
    task = sbert.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise BuildError(f"{where}: transformer_task {task!r} is not supported (only 'feature-extraction')")
    for key in ("processing_kwargs", "query_length", "document_length", "query_expansion"):
        if sbert.get(key):
            raise BuildError(f"{where}: {key} is not supported (the server tokenizes plain text to max_seq_length)")
    modality = sbert.get("modality_config") or {}
    if set(modality) - {"text"}:
        raise BuildError(f"{where}: modalities {sorted(set(modality) - {'text'})} are not supported (text only)")


def pooling_modes(config: dict[str, Any], where: Path) -> tuple[tuple[str, ...], bool]:
    """The pooling modes of a sentence-transformers Pooling config (new `pooling_mode` or legacy booleans, which
    default to mean as in sentence-transformers) and its include_prompt."""
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        modes = (raw,) if isinstance(raw, str) else tuple(raw)
    else:
        modes = tuple(mode for key, mode in LEGACY_POOLING_KEYS.items() if config.get(key)) or ("mean",)
    unknown = [mode for mode in modes if mode not in POOLING_MODES]
    if not modes or unknown:
        raise BuildError(f"{where}: pooling {unknown or 'none'} is not supported; modes: {', '.join(POOLING_MODES)}")
    return modes, bool(config.get("include_prompt", True))


def _read_dense(root: Path, module: dict[str, Any], path: Path) -> SourceDense:
    config = load_json(path / "config.json")
    activation_path = str(config.get("activation_function") or DEFAULT_DENSE_ACTIVATION)
    activation = activation_path.rsplit(".", 1)[-1].lower()
    if not activation_path.startswith("torch.") or activation not in ACTIVATIONS:
        names = ", ".join(a.capitalize() for a in ACTIVATIONS)
        raise _refuse(root, module, f"activation {activation_path!r} (supported: torch.nn {names})")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, MODULE_OUTPUT) not in (MODULE_OUTPUT, None):
            raise _refuse(root, module, f"{key} {config[key]!r} (only the pooled sentence embedding)")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        raise _refuse(root, module, "its directory holds no weights")
    return SourceDense(
        path=path,
        in_features=int(config["in_features"]),
        out_features=int(config["out_features"]),
        activation=activation,
        bias=bool(config.get("bias", True)),
        residual=bool(config.get("use_residual", False)),
    )


def _check_dense_chain(source: Source) -> None:
    size = source.hidden_size * len(source.pooling.split(POOLING_SEPARATOR))
    for layer in source.dense:
        if layer.in_features != size:
            raise BuildError(f"{layer.path}: Dense in_features {layer.in_features} != its input's size {size}")
        size = layer.out_features


def _read_prompts(path: Path) -> dict[str, Any]:
    """Prompts by the API input type they serve, plus any others the model names; and the default prompt."""
    config = optional_json(path)
    declared = {str(k): str(v) for k, v in (config.get("prompts") or {}).items()}
    prompts = dict(declared)
    for input_type, names in PROMPT_NAMES.items():
        found = next((name for name in names if name in declared), None)
        if found is not None:
            prompts[input_type] = declared[found]
    default = str(config.get("default_prompt_name") or "")
    if default and default not in prompts:
        raise BuildError(f"{path}: default_prompt_name {default!r} is not one of the prompts {sorted(prompts)}")
    return {"prompts": prompts, "default_prompt_name": default}


def _read_model_dir(root: Path, model_dir: Path, *, kind: str, declared_max: int | None) -> Source:
    config = load_json(model_dir / "config.json")
    dimensions = config.get("hidden_size") or config.get("dim") or config.get("d_model")
    if not isinstance(dimensions, int):
        raise BuildError(f"{model_dir / 'config.json'}: no hidden_size; only transformer text models are supported")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in model_dir.iterdir()):
        raise BuildError(f"{model_dir}: no weights (*.safetensors or pytorch_model.bin)")
    if not (model_dir / TOKENIZER_FILE).is_file() and not (model_dir / "tokenizer_config.json").is_file():
        raise BuildError(f"{model_dir}: no tokenizer files (tokenizer.json or tokenizer_config.json)")
    position_limit = _position_limit(config)
    tokenizer_max = optional_json(model_dir / "tokenizer_config.json").get("model_max_length")
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
        architecture=str(config.get("model_type", "")),
        hidden_size=dimensions,
        max_input_tokens=int(limit),
        position_limit=position_limit,
        license=_readme_license(root),
        file_hashes=hash_files(root),
    )


def _position_limit(config: dict[str, Any]) -> int | None:
    """Longest sequence the position embeddings cover (RoBERTa-style models offset positions by padding_idx + 1)."""
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int) or positions <= 0:
        return None
    model_type = str(config.get("model_type", ""))
    if "roberta" in model_type or model_type in PADDING_OFFSET_POSITIONS:
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


def hash_files(root: Path) -> dict[str, str]:
    """sha256 of every file that can change a built model (weights, configs, vocabularies), by relative path."""
    hashes = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        hidden = any(part.startswith(".") for part in relative.parts)
        if path.is_file() and path.suffix in FINGERPRINT_SUFFIXES and not hidden:
            hashes[relative.as_posix()] = sha256_file(path)
    return hashes


def digest(data: Any) -> str:
    """A stable sha256 of JSON-able data."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()
