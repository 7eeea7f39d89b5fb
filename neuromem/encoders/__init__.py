"""Brain encoders: images (or clips) → predicted responses on 20,484 fsaverage5 vertices."""

from neuromem.encoders.base import BrainEncoder
from neuromem.encoders.registry import available_encoders, load_encoder, register_encoder

__all__ = ["BrainEncoder", "available_encoders", "load_encoder", "register_encoder"]
