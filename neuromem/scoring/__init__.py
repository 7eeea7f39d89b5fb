"""Scoring images with brain encoders: the per-batch function and the score-table format."""
