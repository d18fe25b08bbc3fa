"""Benchmarks of the service, run as modules (`python -m bench.<name>`); results land in bench/results/."""
