"""Build model directories for the server's model repository, offline.

    python -m tools.modelrepo build-defaults --repo models [--models all-minilm-l6-v2,all-mpnet-base-v2]
    python -m tools.modelrepo import SRC --repo models [--id ID] [--alias A ...] [--precision fp32|int8|fp16]
        [--shortened-dimensions 128,256] [--prompt NAME=TEXT ...] [--query-prefix S] [--document-prefix S]
        [--default-prompt-name NAME] [--owned-by S] [--max-input-tokens N] [--force]

Each model directory gets `model.onnx` (token embeddings; the server pools), `tokenizer.json` (padding and
truncation off; the server does both), `dense_<i>.npz` per Dense layer and `manifest.json` (service/engine/manifest.py).
The package's parts: sources (reading what a source declares), pypi (downloading sources), export (tokenizer, ONNX,
Dense weights), quantize (int8, fp16), verify (against torch, sentence-transformers and fp32), build (caching and
atomic placement), defaults (the built-in models) and cli. Pooling, Dense, prompts and padding are the engine's own
code (service.engine), so a build is verified with exactly what the server runs.
"""
