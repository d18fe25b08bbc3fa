"""Command-line client of the embeddings service (`python -m client`, console script `embeddings`)."""
