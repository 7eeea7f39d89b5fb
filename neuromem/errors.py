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


def find_user_error(error: BaseException) -> NeuromemError | None:
    """The :class:`NeuromemError` behind ``error``, if any (None for a bug).

    Errors raised inside Ray tasks and actors reach the driver wrapped (``RayTaskError`` with a
    ``cause``, Ray Data's ``UserCodeException`` chained with ``__cause__``); this walks the chain.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(current, NeuromemError) and not isinstance(cause, BaseException):
            return current
        stack.extend([cause if isinstance(cause, BaseException) else None,
                      current.__cause__, current.__context__])
    return None
