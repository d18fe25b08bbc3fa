"""OpenAI's Batch API for embeddings: files, batches, and the workers that run batches as async jobs."""
