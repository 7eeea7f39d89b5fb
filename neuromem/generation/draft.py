"""DRaFT: fine-tune a LoRA on a Stable Diffusion UNet by backpropagating a differentiable reward.

Clark et al. (ICLR 2024). Images are sampled with DDIM (``eta = 0``) and classifier-free
guidance; the loss is ``-mean(reward)`` and only the LoRA weights train.

- ``draft1``: the gradient flows through the last denoising step only (DRaFT-K with K = 1).
- ``draftk``: through the last ``k`` steps; earlier steps run without a graph.
- ``draftlv``: sample without a graph, then re-noise the final latents ``n`` times to the last
  timestep, denoise each copy once with a graph, and average the ``n`` rewards (lower variance).

An optional DRaFT+-style penalty ``penalty * mean((eps_lora - eps_base)^2)`` over the steps with
a graph keeps the adapted model's noise prediction near the base model's.

All randomness of a sample (initial latents, re-noising) comes from its own seed
(:func:`sample_seed`), so a global batch gives the same samples however it is split across
data-parallel workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuromem.errors import InputError, UnknownNameError

METHODS = ("draft1", "draftk", "draftlv")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter on the UNet's attention projections.

    Defaults follow AlignProp / TRL's AlignProp trainer: rank 4, alpha 4, gaussian init (so
    ``lora_B`` starts at zero), targets ``to_k, to_q, to_v, to_out.0``.
    """

    rank: int = 4
    alpha: float = 4.0
    target_modules: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
    init: str = "gaussian"


@dataclass(frozen=True)
class DraftSettings:
    """Sampling and optimisation settings of one DRaFT run.

    Attributes
    ----------
    method : {"draft1", "draftk", "draftlv"}
    k : int
        Steps with a graph for ``draftk`` (``draft1`` uses 1, ``draftlv`` 0 + re-noising).
    lv_samples : int
        Re-noised copies ``n`` for ``draftlv``.
    num_inference_steps : int
        DDIM steps.
    guidance_scale : float
        Classifier-free guidance scale (``<= 1``: conditional prediction only).
    height, width : int or None
        Image size in pixels; None: the model's native size (:meth:`sized_for`).
    learning_rate, weight_decay, max_grad_norm : float
        AdamW and gradient clipping (AlignProp's values by default: 1e-3, 0.1, 5).
    penalty : float
        Weight of the DRaFT+ penalty; 0 turns it off.
    gradient_checkpointing : bool
        Recompute UNet and VAE-decoder activations in the backward pass.
    """

    method: str = "draft1"
    k: int = 1
    lv_samples: int = 2
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = 512
    width: int | None = 512
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    max_grad_norm: float = 5.0
    penalty: float = 0.0
    gradient_checkpointing: bool = True
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UnknownNameError(f"unknown DRaFT method {self.method!r}; expected {METHODS}")
        if not 1 <= self.grad_steps <= self.num_inference_steps and self.method != "draftlv":
            raise InputError(
                f"k={self.k} must be in 1..num_inference_steps={self.num_inference_steps}"
            )
        if self.method == "draftlv" and self.lv_samples < 1:
            raise InputError(f"lv_samples must be >= 1, got {self.lv_samples}")

    def sized_for(self, pipe) -> DraftSettings:
        """These settings with a height or width of None set to the pipeline's native size."""
        from dataclasses import replace

        from neuromem.generation.pipeline import native_size

        size = native_size(pipe)
        return replace(self, height=self.height or size, width=self.width or size)

    @property
    def grad_steps(self) -> int:
        """Denoising steps of the sampling chain that keep a graph."""
        return {"draft1": 1, "draftk": self.k, "draftlv": 0}[self.method]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record."""
        record = asdict(self)
        record["lora"]["target_modules"] = list(self.lora.target_modules)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> DraftSettings:
        """Inverse of :meth:`to_dict`."""
        record = dict(record)
        lora = dict(record.pop("lora", {}))
        if "target_modules" in lora:
            lora["target_modules"] = tuple(lora["target_modules"])
        return cls(lora=LoraSettings(**lora), **record)


def add_lora(unet: torch.nn.Module, settings: LoraSettings) -> list[torch.nn.Parameter]:
    """Freeze the UNet and add a trainable peft LoRA adapter (``unet.add_adapter``).

    Returns
    -------
    list of torch.nn.Parameter
        The LoRA parameters, the only ones with ``requires_grad``.
    """
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, init_lora_weights=settings.init,
        target_modules=list(settings.target_modules),
    ))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:  # peft keeps the base dtype; train the adapter in float32
        p.data = p.data.float()
    if not params:
        raise InputError(f"LoRA targets {settings.target_modules} match no UNet module")
    return params


def save_lora(unet: torch.nn.Module, directory: str | Path) -> Path:
    """Write the UNet's LoRA in diffusers format (``pipe.load_lora_weights(directory)`` loads it).

    Returns the path of the ``.safetensors`` file.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        str(directory), unet_lora_layers=state, weight_name=LORA_WEIGHT_NAME
    )
    return Path(directory) / LORA_WEIGHT_NAME


def load_lora_into(unet: torch.nn.Module, directory: str | Path) -> None:
    """Set the UNet's existing LoRA adapter from a :func:`save_lora` directory (resuming)."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(directory) / LORA_WEIGHT_NAME))
    state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(state))
    if getattr(result, "unexpected_keys", None):
        raise InputError(f"LoRA in {directory} does not fit this UNet: {result.unexpected_keys}")


def sample_seed(seed: int, sample_id: int) -> int:
    """Seed of one sample's noise, from the run seed and the sample's global index."""
    return int(np.random.SeedSequence([seed, sample_id]).generate_state(1)[0])


def gaussian(seeds: Sequence[int], shape: Sequence[int], device, dtype) -> torch.Tensor:
    """One standard-normal tensor of ``shape`` per seed, stacked: ``(len(seeds), *shape)``."""
    return torch.stack([
        torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s)) for s in seeds
    ]).to(device=device, dtype=dtype)


def plan_step(
    step: int, seed: int, n_prompts: int, global_batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Prompts and sample ids of one optimisation step's global batch.

    Returns
    -------
    prompt_index_b, sample_id_b : np.ndarray
        Shape ``(global_batch,)``; worker ``rank`` of ``n`` takes the ``rank``-th contiguous
        slice of ``global_batch / n``.
    """
    rng = np.random.default_rng([seed, step])
    prompt_index_b = rng.integers(n_prompts, size=global_batch)
    sample_id_b = step * global_batch + np.arange(global_batch)
    return prompt_index_b, sample_id_b


@dataclass
class DraftBatch:
    """Inputs of one DRaFT loss evaluation on one worker.

    Attributes
    ----------
    cond_btd, uncond_btd : torch.Tensor
        Prompt and empty-prompt embeddings ``(B, T, D)``.
    latents_bchw : torch.Tensor
        Initial noise ``(B, C, h, w)`` (``h = height / vae_scale_factor``).
    renoise_nbchw : torch.Tensor or None
        Re-noising noise for ``draftlv``, ``(n, B, C, h, w)``.
    """

    cond_btd: torch.Tensor
    uncond_btd: torch.Tensor
    latents_bchw: torch.Tensor
    renoise_nbchw: torch.Tensor | None = None


def make_batch(
    pipe, prompts: Sequence[str], sample_ids: Sequence[int], seed: int, settings: DraftSettings
) -> DraftBatch:
    """Embed ``prompts`` and draw each sample's noise from :func:`sample_seed`."""
    from neuromem.generation.pipeline import encode_prompts

    if len(prompts) != len(sample_ids):
        raise InputError(f"{len(prompts)} prompts for {len(sample_ids)} sample ids")
    scale = pipe.vae_scale_factor
    if settings.height % (scale * 4) or settings.width % (scale * 4):
        raise InputError(
            f"height and width must be multiples of {scale * 4}, got "
            f"{settings.height} x {settings.width}"
        )
    shape = (pipe.unet.config.in_channels, settings.height // scale, settings.width // scale)
    device = pipe.device
    cond_btd = encode_prompts(pipe, list(prompts))
    uncond_btd = encode_prompts(pipe, [""]).expand_as(cond_btd)
    seeds = [sample_seed(seed, int(i)) for i in sample_ids]
    latents = gaussian(seeds, shape, device, torch.float32)
    renoise = None
    if settings.method == "draftlv":
        renoise = torch.stack([
            gaussian([sample_seed(s, j + 1) for s in seeds], shape, device, torch.float32)
            for j in range(settings.lv_samples)
        ])
    return DraftBatch(cond_btd, uncond_btd, latents, renoise)


def predict_noise(unet, latents_bchw, t, cond_btd, uncond_btd, guidance_scale: float):
    """Classifier-free-guided noise prediction ``eps_u + s (eps_c - eps_u)``, float32."""
    if guidance_scale <= 1.0:
        return unet(latents_bchw, t, encoder_hidden_states=cond_btd).sample.float()
    eps_u, eps_c = unet(
        torch.cat([latents_bchw, latents_bchw]), t,
        encoder_hidden_states=torch.cat([uncond_btd, cond_btd]),
    ).sample.float().chunk(2)
    return eps_u + guidance_scale * (eps_c - eps_u)


def decode(vae, latents_bchw: torch.Tensor) -> torch.Tensor:
    """VAE-decode latents to images ``(B, 3, H, W)`` in ``[0, 1]`` (float32)."""
    images = vae.decode(latents_bchw / vae.config.scaling_factor).sample.float()
    return (images / 2 + 0.5).clamp(0, 1)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _denoise(pipe, latents, t, batch, settings, with_graph: bool):
    """One DDIM step; returns the next latents and the DRaFT+ penalty term (0 without)."""
    with torch.set_grad_enabled(with_graph):
        eps = predict_noise(
            pipe.unet, latents, t, batch.cond_btd, batch.uncond_btd, settings.guidance_scale
        )
        penalty = eps.new_zeros(())
        if with_graph and settings.penalty > 0:
            with torch.no_grad():
                pipe.unet.disable_adapters()
                try:
                    eps_base = predict_noise(
                        pipe.unet, latents, t, batch.cond_btd, batch.uncond_btd,
                        settings.guidance_scale,
                    )
                finally:
                    pipe.unet.enable_adapters()
            penalty = (eps - eps_base).square().mean()
        latents = pipe.scheduler.step(eps, t, latents, eta=0.0, return_dict=False)[0]
    return latents, penalty


def draft_loss(
    pipe,
    reward_fn: Callable[[torch.Tensor], torch.Tensor],
    batch: DraftBatch,
    settings: DraftSettings,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DRaFT loss ``-mean(reward) + penalty * mean((eps - eps_base)^2)`` with its graph.

    Parameters
    ----------
    pipe : diffusers.StableDiffusionPipeline
        With a DDIM scheduler and a LoRA on the UNet (:func:`add_lora`).
    reward_fn : callable
        ``images_b3hw`` in ``[0, 1]`` → ``(B,)`` reward (e.g. a ``CompositeReward``).
    batch : DraftBatch
    settings : DraftSettings

    Returns
    -------
    loss : torch.Tensor
        Scalar; backpropagating it gives the LoRA gradient.
    metrics : dict
        ``reward`` (mean over the batch) and ``penalty``.
    """
    scheduler = pipe.scheduler
    device = batch.latents_bchw.device
    scheduler.set_timesteps(settings.num_inference_steps, device=device)
    timesteps = scheduler.timesteps
    first_graph_step = len(timesteps) - settings.grad_steps
    latents = batch.latents_bchw * scheduler.init_noise_sigma
    penalties = []
    with _autocast(device):
        for i, t in enumerate(timesteps):
            with_graph = i >= first_graph_step
            latents, penalty = _denoise(pipe, latents, t, batch, settings, with_graph)
            if with_graph:
                penalties.append(penalty)
        if settings.method == "draftlv":
            final = latents.detach()
            t_last = timesteps[-1]
            rewards = []
            for noise_bchw in batch.renoise_nbchw:
                noisy = scheduler.add_noise(final, noise_bchw, t_last.reshape(1))
                denoised, penalty = _denoise(pipe, noisy, t_last, batch, settings, True)
                penalties.append(penalty)
                rewards.append(reward_fn(decode(pipe.vae, denoised)))
            reward_b = torch.stack(rewards).mean(0)
        else:
            reward_b = reward_fn(decode(pipe.vae, latents))
    penalty = torch.stack(penalties).mean()
    loss = -reward_b.float().mean() + settings.penalty * penalty
    return loss, {"reward": float(reward_b.detach().mean()), "penalty": float(penalty.detach())}


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Average gradients over the default process group (what DDP's all-reduce does).

    One flat all-reduce over all LoRA gradients; a no-op outside ``torch.distributed``.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def broadcast_parameters(params: Sequence[torch.nn.Parameter]) -> None:
    """Copy rank 0's values of ``params`` to every rank (as DDP does when it wraps a model).

    A no-op outside ``torch.distributed``.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def make_optimizer(
    params: Sequence[torch.nn.Parameter], settings: DraftSettings
) -> torch.optim.Optimizer:
    """AdamW over the LoRA parameters."""
    return torch.optim.AdamW(
        params, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )


def prepare_pipeline(pipe, settings: DraftSettings) -> list[torch.nn.Parameter]:
    """Add the LoRA, freeze everything else, turn on gradient checkpointing.

    Returns the LoRA parameters.
    """
    from diffusers import DDIMScheduler

    if not isinstance(pipe.scheduler, DDIMScheduler):
        raise InputError(f"DRaFT samples with DDIM; got {type(pipe.scheduler).__name__}")
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    params = add_lora(pipe.unet, settings.lora)
    if settings.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        pipe.vae.enable_gradient_checkpointing()
    return params


def draft_update(
    pipe,
    reward_fn: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.nn.Parameter],
    batch: DraftBatch,
    settings: DraftSettings,
) -> dict[str, float]:
    """One optimisation step: loss, backward, gradient all-reduce, clipping, AdamW.

    Returns the metrics of :func:`draft_loss` plus ``loss``, averaged over the workers (so they
    describe the global batch), and ``grad_norm`` (of the averaged gradient, before clipping).
    """
    optimizer.zero_grad(set_to_none=True)
    loss, metrics = draft_loss(pipe, reward_fn, batch, settings)
    loss.backward()
    average_gradients(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
    optimizer.step()
    metrics = _average_metrics({**metrics, "loss": float(loss.detach())}, params[0].device)
    return {**metrics, "grad_norm": float(grad_norm)}


def _average_metrics(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """Means over the workers' equal shares of the global batch (identity without a group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return metrics
    values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=device)
    dist.all_reduce(values)
    values = (values / dist.get_world_size()).tolist()
    return dict(zip(metrics, values, strict=True))
