"""Representation comparisons: layer-wise PLS read-outs, neural predictivity and CKA."""
