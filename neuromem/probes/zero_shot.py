"""Zero-shot image categories with CLIP: each class is a set of text prompts.

A class's text embedding is the mean of its prompts' L2-normalised embeddings, normalised again
(CLIP's prompt ensembling). An image's class probabilities are the softmax over classes of
``logit_scale · cos(image, class)``; its label is the most probable class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import open_clip
import pyarrow as pa
import torch

from neuromem.encoders.preprocessing import check_images, normalise, resize_center_crop
from neuromem.errors import InputError

#: Default classes (the seed's scene / object split) and their prompts.
DEFAULT_CLASSES: dict[str, tuple[str, ...]] = {
    "scene": (
        "a photo of a scene.",
        "a photo of a landscape.",
        "a photo of a room.",
        "a photo of a street.",
    ),
    "object": (
        "a photo of an object.",
        "a close-up photo of a thing.",
        "a photo of a person.",
        "a photo of an animal.",
    ),
}


def parse_classes(text: str | None) -> dict[str, tuple[str, ...]]:
    """Parse ``name=prompt|prompt,name=prompt`` into ``{name: prompts}``.

    ``None`` gives :data:`DEFAULT_CLASSES`. A class given without ``=`` uses the prompt
    ``"a photo of a {name}."``.
    """
    if text is None:
        return dict(DEFAULT_CLASSES)
    classes: dict[str, tuple[str, ...]] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, prompts = item.partition("=")
        name = name.strip()
        prompt_list = tuple(p.strip() for p in prompts.split("|") if p.strip()) if sep else (
            f"a photo of a {name}.",
        )
        if not name or not prompt_list or name in classes:
            raise InputError(
                f"cannot parse class {item!r}: expected 'name=prompt|prompt', names unique"
            )
        classes[name] = prompt_list
    if len(classes) < 2:
        raise InputError(f"give at least two classes, got {list(classes)}")
    return classes


class ZeroShotClassifier:
    """Classify images among text-defined classes with an open_clip model.

    Parameters
    ----------
    model : open_clip.CLIP
        Model with ``encode_image``, ``encode_text`` and ``logit_scale``, in eval mode.
    tokenizer : callable
        open_clip tokenizer of the model.
    classes : mapping of str to sequence of str
        Class name → prompts.
    """

    def __init__(
        self, model: torch.nn.Module, tokenizer, classes: Mapping[str, Sequence[str]]
    ) -> None:
        self.model = model
        self.names = list(classes)
        self.device = next(model.parameters()).device
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg["size"]
        self.input_size = int(size if isinstance(size, int) else size[0])
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        with torch.inference_mode():
            class_embeddings = []
            for prompts in classes.values():
                text_pe = model.encode_text(tokenizer(list(prompts)).to(self.device)).float()
                text_pe = torch.nn.functional.normalize(text_pe, dim=-1)
                class_embeddings.append(torch.nn.functional.normalize(text_pe.mean(0), dim=-1))
            self.text_ce = torch.stack(class_embeddings)
            self.logit_scale = float(model.logit_scale.exp())

    @torch.inference_mode()
    def probabilities(self, images_b3hw: torch.Tensor) -> np.ndarray:
        """Class probabilities ``(B, C)`` float32 of float images ``(B, 3, H, W)`` in [0, 1]."""
        check_images(images_b3hw)
        pixels = normalise(
            resize_center_crop(images_b3hw.to(self.device), self.input_size), self.mean, self.std
        )
        image_be = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
        logits_bc = self.logit_scale * image_be @ self.text_ce.T
        return logits_bc.softmax(dim=-1).cpu().numpy()

    def classify(self, images_b3hw: torch.Tensor) -> tuple[list[str], np.ndarray]:
        """Labels (most probable class) and their probabilities ``(B,)``."""
        probs_bc = self.probabilities(images_b3hw)
        best_b = probs_bc.argmax(axis=1)
        return [self.names[k] for k in best_b], probs_bc[np.arange(len(best_b)), best_b]


class ZeroShotRowModel:
    """Zero-shot labels as a row model of the image-map engine: images → ``label``, ``probability``.

    Parameters
    ----------
    clip_model : str
        ``open_clip:NAME[@PRETRAINED]`` (:func:`neuromem.networks.load_clip`).
    classes : mapping of str to sequence of str
        Class name → prompts.
    seed : int
        Seed of random weights (a spec without ``@PRETRAINED``).
    """

    clip_frames = 0
    schema = pa.schema([pa.field("label", pa.string()), pa.field("probability", pa.float32())])

    def __init__(self, clip_model: str, classes: Mapping[str, Sequence[str]], seed: int = 0) -> None:
        from neuromem.networks import load_clip
        from neuromem.runtime.device import resolve_device

        self.device = resolve_device("auto")
        clip = load_clip(clip_model, seed=seed, device=self.device)
        self.classifier = ZeroShotClassifier(clip.module, clip.tokenizer, classes)
        self.input_size = self.classifier.input_size

    def __call__(self, decoded) -> pa.Table:
        from neuromem.data.batch import to_float_pixels

        if decoded.rows.num_rows == 0:
            return self.schema.empty_table()
        labels, probabilities = self.classifier.classify(
            to_float_pixels(decoded.pixels, self.device))
        return pa.table({"label": pa.array(labels, pa.string()),
                         "probability": pa.array(probabilities, pa.float32())}, schema=self.schema)
