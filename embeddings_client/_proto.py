"""The generated `embeddings.v1` modules, imported in one place (where they live is a packaging concern)."""

from __future__ import annotations

from service._gen.embeddings.v1 import embeddings_pb2, embeddings_pb2_grpc, jobs_pb2, jobs_pb2_grpc, rest_pb2

__all__ = ["embeddings_pb2", "embeddings_pb2_grpc", "jobs_pb2", "jobs_pb2_grpc", "rest_pb2"]
