"""Average vertex responses within each ROI: ``(B, 20484)`` → ``(B, R)``, numpy or torch."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

from neuromem.cortex.rois import RoiSet
from neuromem.cortex.surface import N_VERTICES, check_n_vertices

if TYPE_CHECKING:
    import torch


class RoiReducer:
    """Mean response over the vertices of each ROI of a set.

    The mean is one matrix product with a dense averaging matrix ``weights_vr`` (20484, R)
    whose column r holds ``1 / n_r`` on the ``n_r`` vertices of ROI r and 0 elsewhere. With
    torch tensors it is differentiable: the gradient of ROI r's output is ``1 / n_r`` on its
    vertices.

    Parameters
    ----------
    roi_set : RoiSet
        The ROIs, in output order.

    Examples
    --------
    >>> reducer = RoiReducer(load_roi_set("default"))     # doctest: +SKIP
    >>> rois_br = reducer(responses_bv)                   # doctest: +SKIP
    >>> dict(zip(reducer.column_names, rois_br.T))        # doctest: +SKIP
    """

    def __init__(self, roi_set: RoiSet) -> None:
        self.roi_set = roi_set
        weights_vr = np.zeros((N_VERTICES, len(roi_set)), dtype=np.float64)
        for r, roi in enumerate(roi_set.names):
            weights_vr[roi_set.indices[roi], r] = 1.0 / roi_set.indices[roi].size
        weights_vr.flags.writeable = False
        self.weights_vr = weights_vr
        self._weights32_vr = weights_vr.astype(np.float32)
        self._torch_weights: dict[tuple, torch.Tensor] = {}

    @property
    def names(self) -> list[str]:
        """ROI names, in output order."""
        return list(self.roi_set.names)

    @property
    def column_names(self) -> list[str]:
        """Table columns of the outputs, ``roi_<NAME>``, in output order."""
        return self.roi_set.column_names

    def torch_weights(self, device, dtype) -> torch.Tensor:
        """The averaging matrix as a ``(20484, R)`` tensor on ``device`` (cached per device/dtype)."""
        import torch

        key = (str(torch.device(device)), dtype)
        if key not in self._torch_weights:
            self._torch_weights[key] = torch.tensor(self.weights_vr, dtype=dtype, device=device)
        return self._torch_weights[key]

    def __call__(self, responses_bv):
        """Average each ROI's vertices.

        Parameters
        ----------
        responses_bv : ndarray or torch.Tensor of shape (B, 20484)
            Vertex responses (any leading shape works; the last axis must be vertices).

        Returns
        -------
        ndarray of float32 or torch.Tensor, shape (B, R)
            numpy input gives float32 numpy (float16 inputs are widened first); a tensor gives a
            tensor of its dtype on its device, connected to the autograd graph.
        """
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(responses_bv, torch.Tensor):
            check_n_vertices(responses_bv, name="responses")
            return responses_bv @ self.torch_weights(responses_bv.device, responses_bv.dtype)
        responses_bv = np.asarray(responses_bv, dtype=np.float32)
        check_n_vertices(responses_bv, name="responses")
        return responses_bv @ self._weights32_vr
