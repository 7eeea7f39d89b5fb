"""How TRIBE v2 sees a still image: the still-image protocols.

TRIBE v2 reads videos, not images (its video features are V-JEPA2 states of 64-frame clips, see
:mod:`neuromem.encoders.tribe_video`), so a still must be turned into a video, and its response
read somewhere in the predicted time course. A protocol says how. Each one is a silent video
whose frames are either the image or a uniform grey frame; the frames of every feature window
are chosen by upstream's rules from that video (as if it were written to a file and read back
losslessly), and the fMRI head sees the video's features in upstream's 100-s segment layout.

``paper``
    The in-silico presentation of the TRIBE v2 paper (d'Ascoli et al. 2026, "A foundation model
    of vision, audition, and language for in-silico neuroscience", arXiv:2605.04326, §5.9, in
    silico experiments): each image is shown for 1 s on a grey background inside a silent
    16-fps video, one image every 8 s. The timings are those the paper's methods are reported
    to give (we could read the paper's opening but not its methods section; all of them are
    fields of :class:`StillProtocol`). Here the video is 4 s of grey (the end of the previous
    trial: every window before onset sees only grey, as in a run of trials), the image for
    1 s, then grey up to 8 s after onset (12 s, 24 feature steps, of which 10 hold the image).
    The response is the head's output in the 1-s step that starts at onset: the head was trained
    on fMRI shifted by 5 s (upstream's ``neuro.offset``), so that step is the BOLD response
    5-6 s after onset, the peak of the haemodynamic response to a 1-s stimulus.
``static``
    The image held on every frame for ``present_seconds`` (3 s, as NSD shows its images): every
    window is 64 copies of the image, so one backbone pass serves all 6 feature steps; the
    response is the mean of the 3 output steps of the presentation.
``fast``
    As ``static`` but the backbone sees a 2-frame clip (one V-JEPA2 tubelet) instead of 64
    frames: 32 times fewer tokens. An approximation: V-JEPA2 attends over time with 3-D rotary
    positions, so the token mean of one tubelet is not that of 32 identical ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from neuromem.encoders.tribe_video import output_steps, window_frame_indices
from neuromem.errors import InputError, UnknownNameError

#: The still-image protocols, the default first.
PROTOCOLS = ("paper", "static", "fast")
#: What the TRIBE v2 paper does with images.
DEFAULT_PROTOCOL = "paper"
#: Frame index of the image and of the grey frame in a plan's rows.
IMAGE, GREY = 0, 1


@dataclass(frozen=True)
class StillPlan:
    """The feature windows of one still-image presentation.

    Attributes
    ----------
    rows : numpy.ndarray
        int64 ``(N, F)``: frame ``j`` of window ``k`` is the image (:data:`IMAGE`) or the grey
        frame (:data:`GREY`).
    duration : float
        Duration of the presentation video, s (its ``N`` feature steps span it).
    read : slice
        Output (fMRI-rate) steps whose mean is the response to the image.
    """

    rows: np.ndarray
    duration: float
    read: slice

    @property
    def uses_grey(self) -> bool:
        return bool((self.rows == GREY).any())


@dataclass(frozen=True)
class StillProtocol:
    """A still-image protocol and its timings (see the module docstring).

    Attributes
    ----------
    name : str
        ``"paper"``, ``"static"`` or ``"fast"``.
    fps : float
        Frame rate of the presentation video (``paper``), Hz.
    image_seconds : float
        Time the image is on screen (``paper``), s.
    trial_seconds : float
        Onset-to-onset interval (``paper``): grey follows the image up to this time, s.
    lead_seconds : float
        Grey shown before onset (``paper``), s.
    read_seconds : tuple of float
        Start and end, after onset, of the output steps averaged into the response (``paper``), s.
    grey_level : int
        uint8 value of the grey frames.
    present_seconds : float
        How long the image is held (``static``, ``fast``), s.
    fast_frames : int
        Frames of the clip the backbone sees (``fast``).
    """

    name: str
    fps: float = 16.0
    image_seconds: float = 1.0
    trial_seconds: float = 8.0
    lead_seconds: float = 4.0
    read_seconds: tuple[float, float] = (0.0, 1.0)
    grey_level: int = 128
    present_seconds: float = 3.0
    fast_frames: int = 2

    def __post_init__(self) -> None:
        check_protocol(self.name)
        if not 0 <= self.grey_level <= 255:
            raise InputError(f"grey_level must be in 0..255, got {self.grey_level}")
        if not 0 < self.image_seconds <= self.trial_seconds:
            raise InputError("image_seconds must be in (0, trial_seconds]")
        start, stop = self.read_seconds
        if not 0 <= start < stop <= self.trial_seconds:
            raise InputError(f"read_seconds must satisfy 0 <= start < stop <= trial_seconds, "
                             f"got {self.read_seconds}")

    def to_dict(self) -> dict:
        """The protocol's settings (those that apply to it), for metadata."""
        keys = {
            "paper": ("fps", "image_seconds", "trial_seconds", "lead_seconds", "read_seconds",
                      "grey_level"),
            "static": ("present_seconds",),
            "fast": ("present_seconds", "fast_frames"),
        }[self.name]
        settings = asdict(self)
        return {"name": self.name, **{key: settings[key] for key in keys}}

    def plan(
        self,
        frequency: float,
        clip_duration: float | None,
        num_frames: int,
        output_frequency: float,
    ) -> StillPlan:
        """The windows of the presentation video under upstream's window rules.

        Parameters
        ----------
        frequency : float
            Feature rate, Hz.
        clip_duration : float or None
            Window span, s.
        num_frames : int
            Frames per window.
        output_frequency : float
            fMRI rate of the head's output, Hz.
        """
        if self.name == "paper":
            n_video = round((self.lead_seconds + self.trial_seconds) * self.fps)
            onset = round(self.lead_seconds * self.fps)
            is_image = np.zeros(n_video, dtype=bool)
            is_image[onset : onset + round(self.image_seconds * self.fps)] = True
            duration = n_video / self.fps
            indices_nf = window_frame_indices(
                n_video, self.fps, duration, frequency, clip_duration, num_frames)
            rows = np.where(is_image[indices_nf], IMAGE, GREY).astype(np.int64)
            start, stop = (self.lead_seconds + s for s in self.read_seconds)
            read = slice(math.floor(round(start * output_frequency, 6)),
                         math.ceil(round(stop * output_frequency, 6)))
            return StillPlan(rows, duration, read)
        n_steps = int(round(self.present_seconds * frequency))
        if n_steps < 1:
            raise InputError(f"present_seconds={self.present_seconds} is shorter than half a "
                             f"feature step ({0.5 / frequency:g} s)")
        frames = num_frames if self.name == "static" else self.fast_frames
        rows = np.full((n_steps, frames), IMAGE, dtype=np.int64)
        return StillPlan(rows, self.present_seconds,
                         slice(0, output_steps(self.present_seconds, output_frequency)))


def check_protocol(name: str) -> str:
    """Return ``name`` if it is a protocol, else raise :class:`UnknownNameError`."""
    if name not in PROTOCOLS:
        raise UnknownNameError(
            f"unknown still-image protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return name
