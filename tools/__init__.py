"""Offline tools for the embeddings service (model repository builder). Never imported by the server."""
