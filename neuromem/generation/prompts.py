"""Prompts of the DRaFT commands: training prompts, held-out evaluation prompts, prompt files.

The training prompts mix objects, faces and scenes, so the reward can trade scene content for
object and face content; the held-out prompts share none of them.
"""

from __future__ import annotations

from neuromem.errors import InputError

#: ``neuromem finetune``'s prompts when ``--prompts`` is not given.
TRAINING_PROMPTS: tuple[str, ...] = (
    "a photograph of a red bicycle leaning against a wall",
    "a close-up portrait of an elderly man smiling",
    "a mountain lake at sunrise",
    "a cup of coffee on a wooden table",
    "a child holding a balloon in a park",
    "an empty hallway in an office building",
    "a golden retriever catching a frisbee",
    "a city street at night with neon signs",
    "a woman reading a book by the window",
    "a forest path covered in autumn leaves",
    "a vintage typewriter on a desk",
    "a crowded beach on a summer day",
    "a firefighter in uniform",
    "a quiet library with tall bookshelves",
    "a bowl of fruit on a kitchen counter",
    "a desert highway under a clear sky",
)

#: ``neuromem evaluate-lora``'s prompts when ``--prompts`` is not given (not in the training set).
HELD_OUT_PROMPTS: tuple[str, ...] = (
    "a portrait of a young woman wearing a hat",
    "a wooden bridge over a river",
    "a pair of running shoes on a doormat",
    "a subway station platform",
    "a cat sleeping on a sofa",
    "a wheat field under storm clouds",
    "a chef cooking in a restaurant kitchen",
    "a lighthouse on a rocky coast",
)


def read_prompts(location: str | None, default: tuple[str, ...] = ()) -> list[str]:
    """Prompts from a text file, one a line, blank lines skipped (local path or URI).

    Parameters
    ----------
    location : str or None
        The file; None gives ``default``.
    default : tuple of str
        Prompts when no file is given.

    Raises
    ------
    InputError
        The file cannot be read or holds no prompt.
    """
    from neuromem.runtime.storage import read_text

    if location is None:
        return list(default)
    prompts = [line.strip() for line in read_text(location).splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise InputError(f"{location} holds no prompts; expected one prompt a line")
    return prompts
