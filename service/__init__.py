"""The embeddings gRPC service: API servicers, the engine, the model registry."""
