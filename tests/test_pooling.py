"""The engine's pooling and Dense head against sentence-transformers' own modules, on random token embeddings
padded on either side, with and without the prompt left out; and the manifest fields that describe them."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.manifest import POOLING_MODES, DenseLayer, ManifestError, ModelManifest
from service.engine.pooling import EmbeddingHead, pool

LENGTHS = [5, 9, 2, 9, 7]
HIDDEN = 6


def batch(side: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Token embeddings [batch, 9, hidden] with each row's real tokens on the left or right of its padding."""
    rng = np.random.default_rng(seed)
    rows = [rng.normal(size=(n, HIDDEN)).astype(np.float32) for n in LENGTHS]
    longest = max(LENGTHS)
    embeddings = rng.normal(size=(len(rows), longest, HIDDEN)).astype(np.float32)  # padding holds garbage
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, row in enumerate(rows):
        start = 0 if side == "right" else longest - len(row)
        embeddings[i, start : start + len(row)] = row
        mask[i, start : start + len(row)] = 1
    return embeddings, mask, rows


def reference(embeddings: np.ndarray, mask: np.ndarray, mode: str, prompt_length: int = 0) -> np.ndarray:
    import torch
    from sentence_transformers.sentence_transformer.modules import Pooling

    features = {"token_embeddings": torch.from_numpy(embeddings), "attention_mask": torch.from_numpy(mask)}
    if prompt_length:
        features["prompt_length"] = prompt_length
    return Pooling(HIDDEN, mode, include_prompt=not prompt_length)(features)["sentence_embedding"].numpy()


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("mode", POOLING_MODES)
def test_each_mode_matches_sentence_transformers_on_either_padding(mode: str, side: str) -> None:
    embeddings, mask, _ = batch(side)
    np.testing.assert_allclose(pool(embeddings, mask, mode), reference(embeddings, mask, mode), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_padding_side_does_not_change_a_vector(mode: str) -> None:
    right, right_mask, _ = batch("right")
    left, left_mask, _ = batch("left")
    np.testing.assert_allclose(pool(right, right_mask, mode), pool(left, left_mask, mode), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("mode", POOLING_MODES)
def test_prompt_tokens_left_out_like_sentence_transformers(mode: str, side: str) -> None:
    embeddings, mask, _ = batch(side)
    prompts = np.full(len(LENGTHS), 2)
    expected = reference(embeddings, mask, mode, prompt_length=2)
    np.testing.assert_allclose(pool(embeddings, mask, mode, prompts), expected, rtol=1e-5, atol=1e-6)


def test_modes_concatenate_in_order() -> None:
    embeddings, mask, _ = batch("right")
    combined = pool(embeddings, mask, ("cls", "max", "lasttoken"))
    parts = [pool(embeddings, mask, mode) for mode in ("cls", "max", "lasttoken")]
    np.testing.assert_array_equal(combined, np.concatenate(parts, axis=1))


@pytest.mark.parametrize(("activation", "residual"), [("tanh", False), ("identity", True), ("relu", True)])
def test_dense_layers_match_sentence_transformers(tmp_path, activation: str, residual: bool) -> None:
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense

    torch.manual_seed(0)
    function = {"tanh": torch.nn.Tanh(), "identity": torch.nn.Identity(), "relu": torch.nn.ReLU()}[activation]
    module = Dense(HIDDEN, 4, activation_function=function, use_residual=residual).eval()
    arrays = {"weight": module.linear.weight.detach().numpy(), "bias": module.linear.bias.detach().numpy()}
    if residual:
        arrays["residual"] = module.residual.weight.detach().numpy()
    np.savez(tmp_path / "dense_0.npz", **arrays)
    manifest = ModelManifest(
        id="m",
        dimensions=4,
        max_input_tokens=8,
        dense=(DenseLayer("dense_0.npz", HIDDEN, 4, activation, True, residual),),
    )
    head = EmbeddingHead.from_manifest(manifest, tmp_path)
    embeddings, mask, _ = batch("right")
    pooled = pool(embeddings, mask, "mean")
    expected = module({"sentence_embedding": torch.from_numpy(pooled)})["sentence_embedding"].detach().numpy()
    np.testing.assert_allclose(head(embeddings, mask), expected, rtol=1e-5, atol=1e-6)


def test_manifest_reads_older_prompt_fields_and_rejects_unknown_values() -> None:
    old = {"id": "m", "dimensions": 4, "max_input_tokens": 8, "query_prefix": "q: ", "document_prefix": "d: "}
    manifest = ModelManifest.from_dict(old)
    assert manifest.prompts == {"query": "q: ", "document": "d: "} and manifest.query_prefix == "q: "
    assert ModelManifest.from_dict(manifest.__dict__ | {"prompts": manifest.prompts}).prompts == manifest.prompts
    with pytest.raises(ManifestError, match="backend 'tensorrt-llm'"):
        ModelManifest.from_dict({**old, "backend": "tensorrt-llm"})
    with pytest.raises(ManifestError, match="pooling"):
        ModelManifest.from_dict({**old, "pooling": "mean+median"})
    with pytest.raises(ManifestError, match="activation 'gelu'"):
        ModelManifest(id="m", dimensions=4, max_input_tokens=8, dense=(DenseLayer("d.npz", 6, 4, "gelu"),))
    with pytest.raises(ManifestError, match="last dense layer gives 3"):
        ModelManifest(id="m", dimensions=4, max_input_tokens=8, dense=(DenseLayer("d.npz", 6, 3),))


def test_default_prompt_applies_where_an_input_type_has_none() -> None:
    manifest = ModelManifest(
        id="m", dimensions=4, max_input_tokens=8, prompts={"query": "q: ", "clustering": "c: "},
        default_prompt_name="clustering",
    )  # fmt: skip
    assert (manifest.prompt("query"), manifest.prompt("document"), manifest.prompt("")) == ("q: ", "c: ", "c: ")
