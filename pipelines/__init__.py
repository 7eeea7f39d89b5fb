"""Ray jobs: one module per job; each runs as ``python -m pipelines.<name>``."""
