"""Every layer's output of an image model, pooled to a fixed size (layer scans).

Networks are built by :func:`neuromem.networks.load_model` from a spec
``LIBRARY:NAME[@WEIGHTS]`` (``timm:resnet18``, ``open_clip:tiny``, ``memnet:/checkpoint`` ...).

Layers
------
A *layer* is one call of a leaf module (a module without sub-modules) that returns a tensor,
in the order the forward pass runs them; modules that are no-ops in evaluation mode
(``Identity``, ``Dropout``) are left out. A leaf called several times in one forward pass
(torchvision's ResNet blocks reuse one ``ReLU``) gives one layer per call, named
``module#k`` for the k-th call after the first. The model's own output is the last layer,
``<output>``, unless it is the output of its last leaf (a classifier).
:meth:`LayerExtractor.discover` finds them with one forward pass of a dummy batch.

Pooling (:class:`Pooling`)
--------------------------
Each output becomes a vector of at most ``max_features`` values, computed inside the forward
hook so the full activation is never kept:

1. Average pooling to a small grid (``grid × grid``, default 2 × 2): ``(B, C, H, W)`` maps are
   pooled over space (:func:`torch.nn.functional.adaptive_avg_pool2d`), ``(B, T, D)`` token
   sequences (ViTs, batch first) over the tokens in sequence order into ``grid²`` bins,
   outputs with more dimensions over everything after the channel axis; ``(B, F)`` vectors
   are kept. The result has ``C · grid²`` (or ``D · grid²``) values.
2. When that is more than ``max_features``, a seeded *very sparse random projection* (Li,
   Hastie & Church 2006) to ``max_features`` values: a ``max_features × F`` matrix with
   entries ``±sqrt(s / max_features)`` with probability ``1 / (2s)`` each and 0 otherwise,
   ``s = sqrt(F)``. It preserves inner products in expectation (Johnson-Lindenstrauss), so CKA
   and linear read-outs are approximately unchanged, and it is stored sparse: about
   ``max_features · sqrt(F)`` values, a few MB even for hundreds of layers. The matrix depends
   only on ``(seed, layer name, F, max_features)``, so every actor and every batch uses the same.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neuromem.errors import InputError
from neuromem.networks import LoadedModel

#: Leaf modules that do nothing in evaluation mode; their "layers" would repeat their input.
NO_OP_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
#: Name of the model's own output as a layer, when no leaf module returns it (open_clip's
#: final projection is a parameter, not a module).
OUTPUT_LAYER = "<output>"


# ----------------------------------------------------------------------------------------------
# Pooling


@dataclass(frozen=True)
class Pooling:
    """How one layer's output becomes a fixed-size vector (see the module docstring).

    Attributes
    ----------
    grid : int
        Side of the average-pooling grid (``grid²`` bins per channel).
    max_features : int
        Most values per layer; more are reduced by a sparse random projection.
    seed : int
        Seed of the projections.
    """

    grid: int = 2
    max_features: int = 4096
    seed: int = 0
    _projections: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.grid < 1 or self.max_features < 1:
            raise InputError(
                f"pooling needs grid >= 1 and max_features >= 1; got {self.grid}, {self.max_features}"
            )

    def pooled_size(self, shape: Sequence[int]) -> int:
        """Values after grid pooling of an output of per-image ``shape`` (batch axis removed)."""
        if len(shape) == 1:
            return int(shape[0])
        if len(shape) == 2:  # (T, D)
            return int(shape[1]) * min(self.grid**2, int(shape[0]))
        if len(shape) == 3:  # (C, H, W)
            return int(shape[0]) * min(self.grid, int(shape[1])) * min(self.grid, int(shape[2]))
        return int(shape[0]) * min(self.grid**2, int(np.prod(shape[1:])))

    def n_features(self, shape: Sequence[int]) -> int:
        """Values stored per image for an output of per-image ``shape``."""
        return min(self.pooled_size(shape), self.max_features)

    def __call__(self, name: str, output: torch.Tensor) -> torch.Tensor:
        """Pool one layer's batch output ``(B, ...)`` to ``(B, n_features)`` float32."""
        x = output.detach().float()
        if x.ndim == 2:
            pooled_bf = x
        elif x.ndim == 3:  # (B, T, D): bins of consecutive tokens
            bins = min(self.grid**2, x.shape[1])
            pooled_bf = F.adaptive_avg_pool1d(x.transpose(1, 2), bins).flatten(1)
        elif x.ndim == 4:
            pooled_bf = F.adaptive_avg_pool2d(
                x, (min(self.grid, x.shape[2]), min(self.grid, x.shape[3]))
            ).flatten(1)
        elif x.ndim > 4:
            flat = x.flatten(2)
            pooled_bf = F.adaptive_avg_pool1d(flat, min(self.grid**2, flat.shape[2])).flatten(1)
        else:
            raise InputError(f"layer {name!r}: cannot pool an output of shape {tuple(x.shape)}")
        if pooled_bf.shape[1] <= self.max_features:
            return pooled_bf
        projection_kf = self.projection(name, pooled_bf.shape[1], pooled_bf.device)
        return torch.sparse.mm(projection_kf, pooled_bf.T).T

    def projection(self, name: str, n_in: int, device: torch.device) -> torch.Tensor:
        """The sparse ``(max_features, n_in)`` projection of layer ``name`` (cached)."""
        key = (name, n_in, str(device))
        if key not in self._projections:
            self._projections[key] = sparse_projection(
                n_in, self.max_features, seed=(self.seed, zlib.crc32(name.encode()))
            ).to(device)
        return self._projections[key]


def sparse_projection(n_in: int, n_out: int, *, seed) -> torch.Tensor:
    """Very sparse random projection matrix ``(n_out, n_in)`` (Li, Hastie & Church 2006).

    Entries are ``±sqrt(s / n_out)`` with probability ``1/(2s)`` each, else 0, ``s = sqrt(n_in)``,
    so ``E‖P x‖² = ‖x‖²``. Returned as a coalesced sparse COO float32 tensor.
    """
    rng = np.random.default_rng(seed)
    s = np.sqrt(n_in)
    nnz = rng.binomial(n_in * n_out, 1.0 / s)
    flat = rng.choice(n_in * n_out, size=nnz, replace=False)
    values = np.sqrt(s / n_out) * rng.choice([-1.0, 1.0], size=nnz)
    indices = np.stack([flat // n_in, flat % n_in])
    return torch.sparse_coo_tensor(
        torch.as_tensor(indices),
        torch.as_tensor(values, dtype=torch.float32),
        (n_out, n_in),
        check_invariants=False,
    ).coalesce()


# ----------------------------------------------------------------------------------------------
# Discovery and extraction


@dataclass(frozen=True)
class LayerInfo:
    """One layer of a model.

    Attributes
    ----------
    name : str
        Module path, plus ``#k`` for the k-th call after the first.
    module : str
        Module path (``named_modules`` key).
    call : int
        Which call of the module in a forward pass (0 = first).
    index : int
        Position in execution order (0 = first layer run).
    shape : tuple of int
        Output shape per image (batch axis removed).
    n_features : int
        Values stored per image after pooling.
    """

    name: str
    module: str
    call: int
    index: int
    shape: tuple[int, ...]
    n_features: int

    def to_dict(self) -> dict:
        return asdict(self)


def leaf_modules(module: nn.Module) -> dict[str, nn.Module]:
    """Leaf sub-modules (no children) that are not no-ops in eval mode, by name."""
    return {
        name: sub
        for name, sub in module.named_modules()
        if name and not any(True for _ in sub.children()) and not isinstance(sub, NO_OP_MODULES)
    }


class LayerExtractor:
    """Forward hooks that pool every chosen layer's output during one forward pass.

    Parameters
    ----------
    model : LoadedModel
    pooling : Pooling
    layers : list of LayerInfo or None
        Layers to keep (None: discover them all with :meth:`discover`).
    include : str or None
        Regular expression a layer name must match (``re.search``) to be kept.

    Use :meth:`__call__` on float images in [0, 1]; it returns ``{layer name: (B, K) tensor}``.
    """

    def __init__(
        self,
        model: LoadedModel,
        pooling: Pooling,
        layers: list[LayerInfo] | None = None,
        include: str | None = None,
    ) -> None:
        self.model = model
        self.pooling = pooling
        self._modules = leaf_modules(model.module)
        self._calls: dict[str, int] = {}
        self._wanted: set[str] | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._outputs: dict[str, torch.Tensor] = {}
        self._handles = [
            module.register_forward_hook(self._hook(name)) for name, module in self._modules.items()
        ]
        self._last_output: torch.Tensor | None = None
        self._handles.append(model.module.register_forward_hook(self._hook(OUTPUT_LAYER)))
        self.layers = self.discover(include) if layers is None else list(layers)
        self._wanted = {layer.name for layer in self.layers}

    def _hook(self, module_name: str):
        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor) or output.ndim < 2:
                return
            if module_name == OUTPUT_LAYER and output is self._last_output:
                return  # the model returns its last leaf's output: already a layer
            self._last_output = output
            call = self._calls.get(module_name, 0)
            self._calls[module_name] = call + 1
            name = module_name if call == 0 else f"{module_name}#{call}"
            if self._wanted is None:
                self._shapes[name] = tuple(output.shape[1:])
            elif name in self._wanted:
                self._outputs[name] = self.pooling(name, output)

        return hook

    def discover(self, include: str | None = None) -> list[LayerInfo]:
        """Run a dummy batch and list the layers that produced a tensor, in execution order."""
        device = next(iter(self.model.module.parameters())).device
        self._shapes = {}
        self._calls = {}
        generator = torch.Generator().manual_seed(0)
        size = self.model.image_size
        with torch.inference_mode():
            self.model.module(
                torch.rand(2, 3, size, size, generator=generator).to(device)
            )
        self._last_output = None
        pattern = re.compile(include) if include else None
        layers = []
        for name, shape in self._shapes.items():
            if pattern is not None and not pattern.search(name):
                continue
            module, _, call = name.partition("#")
            layers.append(
                LayerInfo(
                    name, module, int(call or 0), len(layers), shape, self.pooling.n_features(shape)
                )
            )
        if not layers:
            raise InputError(
                f"model {self.model.spec}: no layer matches {include!r}"
                if include
                else f"model {self.model.spec}: no leaf module returned a tensor"
            )
        return layers

    @torch.inference_mode()
    def __call__(self, images_b3hw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled outputs ``{name: (B, n_features)}`` of every layer for float images in [0, 1]."""
        device = next(iter(self.model.module.parameters())).device
        self._calls = {}
        self._outputs = {}
        self.model.module(self.model.preprocess(images_b3hw.to(device)))
        missing = self._wanted - self._outputs.keys()
        if missing:
            raise InputError(
                f"model {self.model.spec}: layers {sorted(missing)[:5]} did not run in this batch"
            )
        outputs, self._outputs, self._last_output = self._outputs, {}, None
        return {layer.name: outputs[layer.name] for layer in self.layers}

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def depth_fractions(n_layers: int) -> np.ndarray:
    """Relative depth ``index / (n_layers - 1)`` of each layer (0 for a single layer)."""
    return np.arange(n_layers) / max(1, n_layers - 1)
