"""API servicers: translate between the protos and the engine."""
