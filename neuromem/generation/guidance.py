"""Brain-guided sampling: steer a diffusers Stable Diffusion pipeline with a brain encoder.

At every guided denoising step ``t`` the noise prediction ``ε`` (after classifier-free
guidance) is corrected:

1. predict the clean latents ``x̂₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t``;
2. decode them with the VAE to an image in ``[0, 1]`` and score it with a
   :class:`~neuromem.encoders.base.BrainEncoder` (optionally with the gradient path stopped
   at backbone depth ``trunc_layer``, or a straight-through ``surrogate_layer`` where the
   encoder has one); the objective is a weighted sum of ROI responses
   (:class:`~neuromem.generation.objective.RoiObjective`);
3. take the gradient of the objective with respect to the decoded pixels, blur it with a
   Gaussian of ``blur_sigma`` pixels (optionally scale it to unit RMS per image,
   ``normalize_grad``), and carry it back through the VAE decoder to the latents:
   ``g = ∂objective/∂x_t``;
4. ``ε ← ε − √(1−ᾱ_t) · scale · g``, then the scheduler steps as usual.

The gradient path (``grad_path``)
---------------------------------
- ``x0`` (default): ``ε`` is held fixed while differentiating ``x̂₀``, so ``∂x̂₀/∂x_t =
  1/√ᾱ_t`` and no UNet backward pass is needed.
- ``unet``: ``ε = ε_θ(x_t)`` is recomputed with autograd (both halves of a classifier-free-
  guidance batch, combined as the sampler combines them), so ``∂x̂₀/∂x_t = (I − √(1−ᾱ_t)
  ∂ε/∂x_t)/√ᾱ_t``: the full backward through the UNet, as BrainDiVE and diffusers' community
  CLIP-guided pipeline do. It costs a UNet forward and backward per guided step.

The two agree where ``ᾱ_t → 1`` (the last steps) and differ most early, where ``1/√ᾱ_t`` is
large: the ``x0`` path weights early steps far more. A scale therefore does not transfer
between the paths, nor from published values computed another way. ``normalize_grad``
makes the scale independent of the encoder's output units: each step's pixel gradient has
unit RMS, so ``scale`` is the step size per unit-RMS pixel gradient.

The correction is applied by a forward hook on ``pipe.unet`` that is active only inside a
:class:`BrainGuidance` context, so the sampling loop is diffusers' own
(``StableDiffusionPipeline`` / ``StableDiffusionImg2ImgPipeline``). Adding the same ``δ`` to
the unconditional and conditional halves of a classifier-free-guidance batch adds exactly
``δ`` to the combined prediction, whatever the CFG scale. With ``scale = 0`` the correction
is an exact zero, so the output equals the unguided pipeline's bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from neuromem.errors import InputError
from neuromem.generation.blur import gaussian_blur
from neuromem.generation.pipeline import SCHEDULERS

#: Gradient paths of the guidance update (module docstring).
GRAD_PATHS = ("x0", "unet")


@dataclass(frozen=True)
class GuidanceConfig:
    """Settings of brain guidance.

    Attributes
    ----------
    scale : float
        Guidance scale: ``δε = −√(1−ᾱ_t) · scale · ∂objective/∂x_t`` (module docstring);
        0 leaves sampling unchanged. Its meaning depends on ``grad_path`` and
        ``normalize_grad``.
    trunc_layer : int or None
        Encoder backbone depth at which the gradient path stops (value unchanged); None:
        the full depth.
    surrogate_layer : int or None
        Straight-through surrogate: the gradient of the encoder's read-out applied at this
        backbone depth, the value of the full encoder (encoders that offer it: the CLIP
        probe); None: none.
    blur_sigma : float
        Standard deviation, in decoded-image pixels, of the Gaussian blur applied to the
        pixel-space gradient; 0: no blur.
    grad_path : {"x0", "unet"}
        ``x0``: ``ε`` held fixed in ``x̂₀``; ``unet``: the full backward through the UNet.
    normalize_grad : bool
        Scale each step's (blurred) pixel gradient to unit RMS per image.
    first_step, last_step : int, int or None
        Guide denoising steps ``first_step..last_step`` (inclusive, counted from 0 over the
        steps the pipeline actually runs; img2img runs fewer). ``last_step=None``: to the end.
    """

    scale: float = 0.0
    trunc_layer: int | None = None
    surrogate_layer: int | None = None
    blur_sigma: float = 0.0
    first_step: int = 0
    last_step: int | None = None
    grad_path: str = "x0"
    normalize_grad: bool = False

    def __post_init__(self) -> None:
        if self.grad_path not in GRAD_PATHS:
            raise InputError(f"grad path must be one of {', '.join(GRAD_PATHS)}, "
                             f"got {self.grad_path!r}")
        if self.trunc_layer is not None and self.surrogate_layer is not None:
            raise InputError("give --trunc-layer (stop the gradient path) or --surrogate-layer "
                             "(straight-through surrogate), not both")
        if not math.isfinite(self.scale):
            raise InputError(f"guidance scale must be finite, got {self.scale}")
        if not (math.isfinite(self.blur_sigma) and self.blur_sigma >= 0):
            raise InputError(f"blur sigma must be >= 0 pixels, got {self.blur_sigma}")
        if self.first_step < 0:
            raise InputError(f"first guided step must be >= 0, got {self.first_step}")
        if self.last_step is not None and self.last_step < self.first_step:
            raise InputError(
                f"last guided step {self.last_step} is before the first {self.first_step}"
            )

    def guides(self, step: int) -> bool:
        """Whether denoising step ``step`` (0-based) is guided."""
        return step >= self.first_step and (self.last_step is None or step <= self.last_step)

    def to_dict(self) -> dict:
        """JSON-serialisable settings."""
        return asdict(self)


@dataclass
class StepRecord:
    """What guidance did at one denoising step (means over the batch; ``cfg_scale`` 1: no CFG)."""

    step: int
    timestep: int
    cfg_scale: float
    objective: float
    grad_norm: float


class BrainGuidance:
    """Context manager steering ``pipe``'s noise predictions towards an ROI objective.

    Parameters
    ----------
    pipe : diffusers.StableDiffusionPipeline
        Also steers ``StableDiffusionImg2ImgPipeline(**pipe.components)``, which shares its UNet.
    encoder : BrainEncoder
        Scores decoded images: ``encoder(images_b3hw, trunc_layer) -> (B, 20484)``.
    objective : RoiObjective
        Maps vertex responses to one number per image, to maximise.
    config : GuidanceConfig

    Attributes
    ----------
    records : list of StepRecord
        One per guided step of the last sampling run inside the context.
    """

    def __init__(self, pipe, encoder, objective, config: GuidanceConfig) -> None:
        if type(pipe.scheduler).__name__ not in SCHEDULERS.values():
            raise InputError(
                "brain guidance needs an epsilon scheduler on alphas_cumprod with unscaled "
                f"model input ({', '.join(SCHEDULERS.values())}); got "
                f"{type(pipe.scheduler).__name__} (load_pipeline(..., scheduler='ddim'))"
            )
        prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction"):
            raise InputError(
                f"brain guidance supports epsilon and v-prediction models, got {prediction!r}"
            )
        encoder.check_trunc_layer(config.trunc_layer)
        encoder.check_surrogate_layer(config.surrogate_layer)
        self.pipe = pipe
        self.encoder = encoder
        self.objective = objective
        self.config = config
        self.records: list[StepRecord] = []
        self._runner = pipe
        self._step = 0
        self._handle = None

    def steering(self, runner) -> BrainGuidance:
        """Steer ``runner``, a pipeline sharing ``pipe``'s UNet and scheduler (e.g. img2img).

        Use as ``with guidance.steering(runner): runner(...)``; the runner's classifier-free
        guidance settings are read during sampling. Plain ``with guidance:`` steers ``pipe``.
        """
        if runner.unet is not self.pipe.unet or runner.scheduler is not self.pipe.scheduler:
            raise InputError("the steered pipeline must share the guided pipeline's UNet and "
                             "scheduler (build it from pipe.components)")
        self._runner = runner
        return self

    def __enter__(self) -> BrainGuidance:
        self.records = []
        self._step = 0
        self._handle = self.pipe.unet.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self._handle = None
        self._runner = self.pipe

    def _hook(self, module, args, kwargs, output):
        step = self._step
        self._step += 1
        if not self.config.guides(step):
            return None
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        eps_model = output[0] if isinstance(output, tuple) else output.sample
        unet = None
        if self.config.grad_path == "unet":
            def unet(sample_in: torch.Tensor) -> torch.Tensor:
                # module.forward: the same call without hooks (no recursion into this one)
                if args:
                    out = module.forward(sample_in, *args[1:], **kwargs)
                else:
                    out = module.forward(**{**kwargs, "sample": sample_in})
                return out[0] if isinstance(out, tuple) else out.sample
        delta = self.correction(sample, timestep, eps_model, step, unet=unet)
        if isinstance(output, tuple):
            return (eps_model + delta, *output[1:])
        output.sample = eps_model + delta
        return output

    def correction(
        self, latent_input: torch.Tensor, timestep, eps_model: torch.Tensor, step: int,
        unet: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``δ = −√(1−ᾱ_t) · scale · ∂objective/∂x_t`` for the UNet's input and output.

        Parameters
        ----------
        latent_input : torch.Tensor
            The UNet's input: ``x_t`` ``(B, 4, h, w)``, or ``[x_t, x_t]`` ``(2B, 4, h, w)``
            under classifier-free guidance.
        timestep : int or torch.Tensor
            Training timestep ``t``.
        eps_model : torch.Tensor
            The UNet's output (``ε``, or ``v`` for v-prediction models such as SD 2.x at
            768 px), same shape as ``latent_input``.
        step : int
            Index of the denoising step (for the record).
        unet : callable or None
            ``grad_path="unet"``: the UNet call of this step as a differentiable function of
            its input (same shape as ``latent_input``); None: ``ε`` held fixed.

        Returns
        -------
        torch.Tensor
            ``δ``, same shape as ``eps_model``, to add to it (in ``v`` units for
            v-prediction models).
        """
        cfg = bool(self._runner.do_classifier_free_guidance)
        cfg_scale = float(self._runner.guidance_scale) if cfg else 1.0
        t = int(timestep.flatten()[0]) if torch.is_tensor(timestep) else int(timestep)
        alpha_bar = self.pipe.scheduler.alphas_cumprod[t].to(torch.float64).item()
        sigma_t = math.sqrt(1.0 - alpha_bar)
        v_prediction = self.pipe.scheduler.config.prediction_type == "v_prediction"

        def eps_of(latents: torch.Tensor, out_model: torch.Tensor) -> torch.Tensor:
            """The sampler's ``ε`` from the UNet's output (CFG combined, ``v`` converted)."""
            if cfg:
                out_uncond, out_text = out_model.chunk(2)
                out_model = out_uncond + cfg_scale * (out_text - out_uncond)
            # v = √ᾱ ε − √(1−ᾱ) x₀, so ε = √(1−ᾱ) x_t + √ᾱ v and a change δ of ε is δ/√ᾱ of v
            return sigma_t * latents + math.sqrt(alpha_bar) * out_model if v_prediction \
                else out_model

        latents = latent_input.chunk(2)[0] if cfg else latent_input
        predict_eps = None if unet is None else (
            lambda x_t: eps_of(x_t, unet(torch.cat([x_t, x_t]) if cfg else x_t)))
        grad_latents, objective_b = self.latent_gradient(
            latents, eps_of(latents, eps_model), alpha_bar, predict_eps)
        delta = (-sigma_t * self.config.scale) * grad_latents
        if v_prediction:
            delta = delta / math.sqrt(alpha_bar)
        self.records.append(StepRecord(
            step=step, timestep=t, cfg_scale=cfg_scale, objective=float(objective_b.mean()),
            grad_norm=float(grad_latents.flatten(1).norm(dim=1).mean()),
        ))
        return torch.cat([delta, delta]) if cfg else delta

    def latent_gradient(
        self, latents: torch.Tensor, eps: torch.Tensor, alpha_bar: float,
        predict_eps: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient of the objective with respect to ``x_t`` through ``x̂₀`` and the VAE.

        Parameters
        ----------
        latents : torch.Tensor
            ``x_t``, shape ``(B, 4, h, w)``.
        eps : torch.Tensor
            Noise prediction, same shape; held fixed unless ``predict_eps`` is given.
        alpha_bar : float
            ``ᾱ_t``.
        predict_eps : callable or None
            ``x_t -> ε`` with autograd (``grad_path="unet"``); None: ``eps`` held fixed.

        Returns
        -------
        grad : torch.Tensor
            ``∂objective/∂x_t`` with the pixel gradient of :meth:`pixel_gradient`, shape
            ``(B, 4, h, w)``.
        objective_b : torch.Tensor
            Objective of each decoded ``x̂₀``, shape ``(B,)``.
        """
        vae = self.pipe.vae
        with torch.enable_grad():
            x_t = latents.detach().requires_grad_(True)
            eps_t = eps.detach() if predict_eps is None else predict_eps(x_t)
            x0 = (x_t - math.sqrt(1.0 - alpha_bar) * eps_t) / math.sqrt(alpha_bar)
            decoded = vae.decode(x0 / vae.config.scaling_factor, return_dict=False)[0]
            images_b3hw = (decoded / 2 + 0.5).clamp(0, 1)
            grad_pixels, objective_b = self.pixel_gradient(images_b3hw.detach())
            (grad,) = torch.autograd.grad(
                images_b3hw, x_t, grad_outputs=grad_pixels.to(images_b3hw.dtype)
            )
        return grad, objective_b

    def pixel_gradient(self, images_b3hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective's gradient on the pixels as guidance uses it: blurred, then scaled
        to unit RMS per image when ``normalize_grad``.

        Parameters
        ----------
        images_b3hw : torch.Tensor
            Decoded images in ``[0, 1]``, shape ``(B, 3, H, W)``.

        Returns
        -------
        grad_pixels : torch.Tensor
            Shape ``(B, 3, H, W)``, the encoder's dtype.
        objective_b : torch.Tensor
            Objective of each image, shape ``(B,)``, detached.
        """
        with torch.enable_grad():
            pixels_b3hw = images_b3hw.detach().to(_dtype_of(self.encoder)).requires_grad_(True)
            responses_bv = self.encoder(pixels_b3hw, **self._gradient_options())
            objective_b = self.objective(responses_bv)
            (grad_pixels,) = torch.autograd.grad(objective_b.sum(), pixels_b3hw)
        grad_pixels = gaussian_blur(grad_pixels, self.config.blur_sigma)
        if self.config.normalize_grad:
            grad_pixels = unit_rms(grad_pixels)
        return grad_pixels, objective_b.detach()

    def _gradient_options(self) -> dict:
        """The encoder's gradient keyword (only the one set, so any encoder takes it)."""
        if self.config.surrogate_layer is not None:
            return {"surrogate_layer": self.config.surrogate_layer}
        return {"trunc_layer": self.config.trunc_layer}


def unit_rms(grad_bchw: torch.Tensor) -> torch.Tensor:
    """Each image's gradient divided by its root mean square (an all-zero one stays zero).

    Parameters
    ----------
    grad_bchw : torch.Tensor
        Shape ``(B, C, H, W)``.

    Returns
    -------
    torch.Tensor
        Same shape; ``mean(out[b] ** 2) == 1`` for every non-zero ``grad_bchw[b]``.
    """
    rms_b = grad_bchw.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    return grad_bchw / rms_b.clamp_min(torch.finfo(grad_bchw.dtype).tiny)


@dataclass
class Generation:
    """Images from one sampling run and what guidance did."""

    images_b3hw: torch.Tensor
    records: list[StepRecord] = field(default_factory=list)


def generate(
    pipe,
    prompts: list[str],
    seeds: list[int],
    *,
    guidance: BrainGuidance | None = None,
    steps: int = 50,
    cfg_scale: float = 7.5,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    init_images_b3hw: torch.Tensor | None = None,
    strength: float = 0.6,
) -> Generation:
    """Sample one image per (prompt, seed) with diffusers' own loop, guided or not.

    Parameters
    ----------
    pipe : diffusers.StableDiffusionPipeline
    prompts : list of str
        ``B`` prompts.
    seeds : list of int
        ``B`` seeds; image ``i``'s initial noise comes from a CPU generator seeded ``seeds[i]``
        alone, so the same seed gives the same start with and without guidance.
    guidance : BrainGuidance or None
        Steer the sampling; None: plain diffusers.
    steps : int
        Denoising steps (img2img runs ``int(steps * strength)`` of them).
    cfg_scale : float
        Classifier-free guidance scale (``> 1`` enables CFG).
    negative_prompt : str or None
    height, width : int or None
        Output size in pixels; None: the pipeline's default.
    init_images_b3hw : torch.Tensor or None
        Img2img: start from these images ``(B, 3, H, W)`` in ``[0, 1]``.
    strength : float
        Img2img: fraction of the schedule to run, in ``(0, 1]``.

    Returns
    -------
    Generation
        ``images_b3hw`` float32 on the CPU in ``[0, 1]`` and the guidance records.
    """
    from diffusers import StableDiffusionImg2ImgPipeline

    if len(prompts) != len(seeds) or not prompts:
        raise InputError(f"need one seed per prompt, got {len(prompts)} prompts, {len(seeds)} seeds")
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    kwargs = dict(
        prompt=list(prompts), num_inference_steps=steps, guidance_scale=cfg_scale,
        negative_prompt=None if negative_prompt is None else [negative_prompt] * len(prompts),
        generator=generators, output_type="pt",
    )
    if init_images_b3hw is None:
        runner = pipe
        kwargs.update(height=height, width=width)
    else:
        if init_images_b3hw.shape[0] != len(prompts):
            raise InputError(
                f"need one init image per prompt, got {init_images_b3hw.shape[0]} images"
            )
        if not 0 < strength <= 1:
            raise InputError(f"img2img strength must be in (0, 1], got {strength}")
        runner = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
        runner.set_progress_bar_config(disable=True)
        kwargs.update(image=init_images_b3hw.to(pipe.device, pipe.unet.dtype), strength=strength)
    if guidance is None:
        images = runner(**kwargs).images
        records: list[StepRecord] = []
    else:
        with guidance.steering(runner):
            images = runner(**kwargs).images
        records = list(guidance.records)
    return Generation(images_b3hw=images.float().cpu(), records=records)


def _dtype_of(module: torch.nn.Module) -> torch.dtype:
    param = next(module.parameters(), None)
    return torch.float32 if param is None else param.dtype
