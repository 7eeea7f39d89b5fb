"""``neuromem evaluate-lora``: a DRaFT LoRA against its base model on held-out prompts.

1. **Checks** (before any model loads): settings, the CLIP spec, the output folder, and the
   checkpoint: ``--lora`` names a checkpoint folder or a ``finetune --out`` folder (its latest
   checkpoint), as a relative path, an absolute one or a URI.
2. **Evaluation** (:func:`neuromem.generation.evaluation.evaluate`): base and LoRA images from the
   same noise, the reward (encoder, ROI set and weights from the checkpoint's ``run.json`` unless
   given), ResMem and CLIP fidelity, with progress bars.
3. **Report** (:func:`neuromem.generation.evaluation.write_report`) into ``--out``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuromem.errors import InputError
from neuromem.generation.reward import CORRELATIONS
from neuromem.runtime.config import JobConfig

#: ``--assessor`` choices: ResMem, or no memorability assessor.
ASSESSORS = ("resmem", "none")


@dataclass(frozen=True)
class EvaluateLoraConfig(JobConfig):
    """Everything ``neuromem evaluate-lora`` needs; fields mirror the command-line options.

    Attributes
    ----------
    model : str
        Stable Diffusion folder, hub id or ``tiny``.
    lora : str
        Checkpoint folder or ``finetune --out`` folder (path or URI).
    out : str
        Output folder (local path or URI).
    encoder, reward, rois : str or None
        Reward's encoder, weights and ROI set (None: the checkpoint's).
    correlation : {"pearson", "partial"}
        Which r of a ``results.json`` reward gives the weights.
    score_table : str or None
        Score table of the same encoder and ROI set for ROI means and stds.
    prompts : str or None
        Prompt file (None: :data:`~neuromem.generation.prompts.HELD_OUT_PROMPTS`).
    seeds : tuple of int or None
        Noise seeds; every prompt is drawn with each (None: 0 for ``tiny``, else 0 to 3).
    inference_steps : int or None
        DDIM steps; None: 4 for ``tiny``, else 50.
    cfg_scale : float
        Classifier-free guidance scale.
    size : int or None
        Image side; None: the model's native size.
    clip : str or None
        open_clip spec of prompt fidelity (None: ``open_clip:tiny`` for ``tiny``, else
        ViT-L/14 OpenAI).
    assessor : {"resmem", "none"}
    batch_size : int
        Images per model call.
    device : str
    no_progress : bool
    """

    model: str
    lora: str
    out: str
    encoder: str | None = None
    reward: str | None = None
    correlation: str = "pearson"
    score_table: str | None = None
    rois: str | None = None
    prompts: str | None = None
    seeds: tuple[int, ...] | None = None
    inference_steps: int | None = None
    cfg_scale: float = 7.5
    size: int | None = None
    clip: str | None = None
    assessor: str = "resmem"
    batch_size: int = 4
    device: str = "auto"
    no_progress: bool = False

    def __post_init__(self) -> None:
        if self.seeds is not None:
            object.__setattr__(self, "seeds", tuple(self.seeds))

    def check(self) -> None:
        """Raise :class:`InputError` for values no run can use (before any model loads)."""
        from neuromem.generation.evaluation import clip_for
        from neuromem.networks import check_network

        self.require_at_least(1, "batch_size", "inference_steps")
        self.require_at_least(8, "size")
        self.require_choice("assessor", ASSESSORS)
        self.require_choice("correlation", CORRELATIONS)
        if self.seeds == ():
            raise InputError("--seeds needs at least one seed")
        if self.cfg_scale < 0:
            raise InputError(f"--cfg-scale must be >= 0, got {self.cfg_scale}")
        check_network(clip_for(self.model, self.clip))


def reward_record(config: EvaluateLoraConfig, trained: dict[str, Any], encoder: str | None,
                  rois: str) -> dict[str, Any]:
    """The reward evaluated: the checkpoint's, unless ``--reward`` or ``--score-table`` is given."""
    from neuromem.generation.reward import load_reward_spec

    if config.reward is None and "reward" in trained and config.score_table is None:
        return trained["reward"]
    return load_reward_spec(config.reward, correlation=config.correlation,
                            score_table=config.score_table, encoder=encoder,
                            roi_set=rois).to_dict()


def run_evaluate_lora(config: EvaluateLoraConfig, argv: list[str] | None = None) -> dict[str, Any]:
    """Check, evaluate and write the report; return the ``evaluation.json`` content."""
    from neuromem.generation.checkpoints import (
        find_lora_checkpoint,
        local_checkpoint,
        read_run_record,
    )
    from neuromem.generation.evaluation import clip_for, evaluate, seeds_for, write_report
    from neuromem.generation.pipeline import inference_steps_for
    from neuromem.generation.prompts import HELD_OUT_PROMPTS, read_prompts
    from neuromem.runtime.device import resolve_device
    from neuromem.runtime.provenance import command_line, utc_now, versions
    from neuromem.runtime.storage import check_writable

    config.check()
    prompts = read_prompts(config.prompts, HELD_OUT_PROMPTS)
    checkpoint = find_lora_checkpoint(config.lora)
    check_writable(config.out)
    device = resolve_device(config.device)
    with local_checkpoint(checkpoint) as folder:
        trained = read_run_record(folder)
        encoder = config.encoder or trained.get("encoder")
        if encoder is None:
            raise InputError("no --encoder given and the checkpoint has no run.json naming one")
        rois = config.rois or trained.get("rois") or "default"
        if trained.get("model") not in (None, config.model):
            raise InputError(f"the LoRA in {checkpoint} was trained on --model "
                             f"{trained['model']!r}, not {config.model!r}: evaluate it on the "
                             "model it adapts")
        evaluation, base_b3hw, lora_b3hw = evaluate(
            model=config.model, lora_dir=folder, prompts=prompts, seeds=seeds_for(config.model, config.seeds),
            encoder=encoder, reward=reward_record(config, trained, encoder, rois), roi_set=rois,
            num_inference_steps=inference_steps_for(config.model, config.inference_steps),
            guidance_scale=config.cfg_scale, size=config.size,
            clip=clip_for(config.model, config.clip), assessor=config.assessor,
            batch_size=config.batch_size, device=device, progress=not config.no_progress,
        )
    evaluation.update(
        lora=checkpoint,
        training_run={k: trained[k] for k in ("step", "settings") if k in trained},
        command=command_line(argv), created=utc_now(),
        versions=versions(("diffusers", "peft", "open_clip_torch")),
    )
    write_report(evaluation, base_b3hw, lora_b3hw, config.out)
    return evaluation
