"""Command-line client of the embeddings service (`python -m embeddings_client`, console script `embeddings`)."""
