"""The engine: tokenize, batch, run, pool. Data flows servicer -> ServedModel -> Batcher -> OnnxEncoder."""
