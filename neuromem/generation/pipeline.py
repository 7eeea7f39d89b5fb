"""Load a Stable Diffusion pipeline: a local folder, a hub id, or ``tiny`` random test components.

``tiny`` builds the test-size components diffusers uses in its own test suite (a two-block UNet
with 32-dimensional cross-attention, a two-block VAE, a five-layer CLIP text encoder of width 32)
with seeded random weights and a byte-level CLIP tokenizer, all offline. It makes 64 × 64 images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from neuromem.errors import InputError, MissingWeightsError, UnknownNameError

TINY = "tiny"
TINY_MAX_TOKENS = 77

#: Denoising steps when a command is not told: a few for ``tiny`` (a run of seconds), else 50.
TINY_INFERENCE_STEPS, DEFAULT_INFERENCE_STEPS = 4, 50

# name -> diffusers scheduler class name; all predict epsilon on alphas_cumprod and leave the
# model input unscaled, which the guided sampler's update relies on.
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
}


def load_pipeline(
    model: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    scheduler: str = "ddim",
):
    """Load a Stable Diffusion (1.x / 2.x) pipeline with its safety checker off.

    Parameters
    ----------
    model : str
        ``"tiny"``, a local pipeline folder (``model_index.json`` inside) or a hub id already in
        the local cache.
    device : str or torch.device
        Where the pipeline's modules live.
    dtype : torch.dtype
        Floating-point type of the modules.
    seed : int
        Seed of the random weights of ``tiny``; loaded weights ignore it.
    scheduler : {"ddim", "ddpm", "pndm", "dpm"}
        Noise scheduler, built from the pipeline's own scheduler configuration.

    Returns
    -------
    diffusers.StableDiffusionPipeline
        With a progress bar disabled.

    Raises
    ------
    UnknownNameError
        If ``scheduler`` is not one of :data:`SCHEDULERS`.
    MissingWeightsError
        If ``model`` is neither a folder nor a hub id in the local cache.
    """
    import diffusers

    if scheduler not in SCHEDULERS:
        raise UnknownNameError(
            f"unknown scheduler {scheduler!r}; expected one of {sorted(SCHEDULERS)}"
        )
    if model == TINY:
        pipe = _tiny_pipeline(seed)
    else:
        pipe = _pretrained_pipeline(model, dtype)
    scheduler_cls = getattr(diffusers, SCHEDULERS[scheduler])
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe = pipe.to(device=device)
    if pipe.unet.dtype != dtype:
        pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inference_steps_for(model: str, steps: int | None = None) -> int:
    """Denoising steps: ``steps`` when given, else the model's default (4 for ``tiny``, else 50)."""
    if steps is not None:
        return steps
    return TINY_INFERENCE_STEPS if model == TINY else DEFAULT_INFERENCE_STEPS


def native_size(pipe) -> int:
    """Image side the pipeline's UNet was built for, in pixels (64 for ``tiny``, 512 for SD 1.5)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """Embed prompts with the pipeline's text encoder.

    Parameters
    ----------
    pipe : diffusers.StableDiffusionPipeline
    prompts : list of str
        ``B`` prompts (use ``""`` for the unconditional embedding).

    Returns
    -------
    torch.Tensor
        ``prompt_embeds_btd``, shape ``(B, T, D)`` (``T`` = 77 tokens).
    """
    if isinstance(prompts, str) or not prompts:
        raise InputError("prompts must be a non-empty list of strings")
    with torch.no_grad():
        embeds_btd, _ = pipe.encode_prompt(
            list(prompts), pipe.device, num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
    return embeds_btd


def _pretrained_pipeline(model: str, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    local = Path(model).expanduser()
    source = str(local) if local.is_dir() else model
    try:
        return StableDiffusionPipeline.from_pretrained(
            source, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False,
            local_files_only=not local.is_dir(),
        )
    except (OSError, ValueError) as exc:
        raise MissingWeightsError(
            f"cannot load a Stable Diffusion pipeline from {model!r}: expected a folder with "
            "model_index.json or a hub id already downloaded to the local cache "
            f"(huggingface-cli download {model}), or 'tiny' for random test components ({exc})"
        ) from exc


def _byte_unicode_table() -> list[str]:
    """The 256 printable characters CLIP's byte-level BPE uses for the bytes 0..255."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    unprintable = [b for b in range(256) if b not in printable]
    code_of_byte = dict(zip(printable, printable, strict=True))
    code_of_byte.update({b: 256 + i for i, b in enumerate(unprintable)})
    return [chr(code_of_byte[b]) for b in range(256)]


def tiny_tokenizer():
    """A CLIP tokenizer with a byte-level vocabulary (514 tokens, no merges), built offline."""
    from transformers import CLIPTokenizer

    chars = _byte_unicode_table()
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TINY_MAX_TOKENS)


def _tiny_pipeline(seed: int):
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32,
            in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, norm_num_groups=2,
        )
        vae = AutoencoderKL(
            block_out_channels=[32, 64], in_channels=3, out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4, norm_num_groups=2,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=37,
            layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5,
            vocab_size=1000, max_position_embeddings=TINY_MAX_TOKENS,
        ))
    finally:
        torch.random.set_rng_state(generator_state)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    for module in (unet, vae, text_encoder):
        module.eval()
    return pipe
