"""Statistics of score tables: ROI and vertex correlations with memorability, spin tests, agreement.

Pure functions (numpy/scipy), no Ray; ``pipelines.decompose`` runs them over score tables.
"""

from neuromem.analysis.agreement import agreement_records, agreement_summary, roi_agreement
from neuromem.analysis.correlation import Correlation, bh_fdr, pearson, spearman
from neuromem.analysis.partial import category_dummies, partial_correlation, within_category
from neuromem.analysis.roi_stats import roi_statistics
from neuromem.analysis.spin import SpinResult, spin_indices, spin_test
from neuromem.analysis.vertexwise import (
    VertexMoments,
    merge_all,
    roi_sign_coherence,
    vertex_moments,
    vertex_pearson,
    vertex_spearman,
)

__all__ = [
    "Correlation",
    "SpinResult",
    "VertexMoments",
    "agreement_records",
    "agreement_summary",
    "bh_fdr",
    "category_dummies",
    "merge_all",
    "partial_correlation",
    "pearson",
    "roi_agreement",
    "roi_sign_coherence",
    "roi_statistics",
    "spearman",
    "spin_indices",
    "spin_test",
    "vertex_moments",
    "vertex_pearson",
    "vertex_spearman",
    "within_category",
]
