"""Brain encoders: images (or clips) → predicted responses on 20,484 fsaverage5 vertices.

Importing this package loads no model code; :class:`BrainEncoder` (and torch) load when first
used.
"""

from neuromem.encoders.registry import available_encoders, load_encoder, register_encoder

__all__ = ["BrainEncoder", "available_encoders", "load_encoder", "register_encoder"]


def __getattr__(name: str):
    if name == "BrainEncoder":
        from neuromem.encoders.base import BrainEncoder

        return BrainEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
