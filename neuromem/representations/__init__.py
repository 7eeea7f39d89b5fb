"""Representation comparisons: layer-wise PLS read-outs, neural predictivity and CKA (seeds 001-002)."""
