"""Image memorability assessors: models that predict how memorable an image is."""

from neuromem.memorability.resmem import ResMemAssessor

__all__ = ["ResMemAssessor"]
