"""Errors that users can cause, each with a message saying what was expected."""


class NeuromemError(Exception):
    """Base class of every error neuromem raises on bad input or missing resources."""


class VertexCountError(NeuromemError, ValueError):
    """An array does not have the expected number of fsaverage5 vertices."""


class UnknownNameError(NeuromemError, KeyError):
    """A name (ROI, atlas area, encoder, column) is not known."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingWeightsError(NeuromemError, FileNotFoundError):
    """Model weights could not be found locally or offline."""


class InputError(NeuromemError, ValueError):
    """An input file or table cannot be used (corrupt, wrong layout, missing column)."""
