"""Brain-guided sampling on the tiny Stable Diffusion pipeline with the tiny CLIP probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import load_roi_set
from neuromem.encoders import load_encoder
from neuromem.errors import InputError
from neuromem.generation.guidance import BrainGuidance, GuidanceConfig, generate, unit_rms
from neuromem.generation.objective import RoiObjective, parse_target, score_rois
from neuromem.generation.pipeline import load_pipeline

PROMPT = "a photo of a house"
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def parts():
    pipe = load_pipeline("tiny", seed=0)
    encoder = load_encoder("clip-probe:tiny")
    reducer = RoiReducer(load_roi_set("default"))
    objective = RoiObjective(reducer, parse_target("roi_PPA:+1,roi_RSC:-1"))
    return pipe, encoder, reducer, objective


def _diffusers_images(pipe, steps, **kwargs):
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    return pipe(prompt=[PROMPT] * len(SEEDS), num_inference_steps=steps, guidance_scale=7.5,
                generator=generators, output_type="pt", **kwargs).images


def test_scale_zero_reproduces_stable_diffusion_pipeline_exactly(parts):
    pipe, encoder, _, objective = parts
    expected = _diffusers_images(pipe, steps=3)
    guidance = BrainGuidance(pipe, encoder, objective, GuidanceConfig(scale=0.0))
    result = generate(pipe, [PROMPT] * 2, SEEDS, guidance=guidance, steps=3, cfg_scale=7.5)
    assert [r.step for r in result.records] == [0, 1, 2]  # the guidance path did run
    assert {r.cfg_scale for r in result.records} == {7.5}
    assert all(r.grad_norm > 0 for r in result.records)
    assert torch.equal(result.images_b3hw, expected)
    # the hook is gone once the context exits: plain calls are unaffected afterwards
    assert not pipe.unet._forward_hooks


def test_scale_zero_img2img_reproduces_diffusers_img2img_exactly(parts):
    pipe, encoder, _, objective = parts
    init_b3hw = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    expected = _diffusers_images(img2img, steps=4, image=init_b3hw, strength=0.5)
    guidance = BrainGuidance(pipe, encoder, objective, GuidanceConfig(scale=0.0))
    result = generate(pipe, [PROMPT] * 2, SEEDS, guidance=guidance, steps=4,
                      init_images_b3hw=init_b3hw, strength=0.5)
    assert len(result.records) == 2  # strength 0.5 of 4 steps
    assert {r.cfg_scale for r in result.records} == {7.5}  # the img2img run's CFG was seen
    assert torch.equal(result.images_b3hw, expected)


def test_guidance_raises_the_target_and_respects_the_step_range(parts):
    pipe, encoder, reducer, objective = parts
    unguided = generate(pipe, [PROMPT] * 2, SEEDS, steps=3).images_b3hw
    guided = generate(pipe, [PROMPT] * 2, SEEDS, steps=3, guidance=BrainGuidance(
        pipe, encoder, objective, GuidanceConfig(scale=1e4))).images_b3hw
    roi_u = torch.from_numpy(score_rois(encoder, reducer, unguided))
    roi_g = torch.from_numpy(score_rois(encoder, reducer, guided))
    ppa, rsc = reducer.column_names.index("roi_PPA"), reducer.column_names.index("roi_RSC")
    # every seed: objective up, PPA (weight +1) up, RSC (weight -1) down
    assert (objective.from_rois(roi_g) > objective.from_rois(roi_u)).all()
    assert (roi_g[:, ppa] > roi_u[:, ppa]).all()
    assert (roi_g[:, rsc] < roi_u[:, rsc]).all()

    late = BrainGuidance(pipe, encoder, objective,
                         GuidanceConfig(scale=1e4, first_step=2, last_step=2))
    result = generate(pipe, [PROMPT] * 2, SEEDS, steps=3, guidance=late)
    assert [r.step for r in result.records] == [2]
    assert not torch.equal(result.images_b3hw, unguided)
    assert not torch.equal(result.images_b3hw, guided)


def _direct_gradient(pipe, encoder, objective, x_t, eps, alpha_bar, **gradient):
    """∂objective/∂x_t through x̂₀ (ε fixed), the VAE and the encoder, in one autograd pass."""
    x_t = x_t.clone().requires_grad_(True)
    x0 = (x_t - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    image = (pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    objective(encoder(image, **gradient)).sum().backward()
    return x_t.grad


def test_x0_path_correction_is_minus_sigma_scale_times_the_fixed_eps_gradient(parts):
    pipe, encoder, _, objective = parts
    gen = torch.Generator().manual_seed(7)
    x_t = torch.randn(1, 4, 32, 32, generator=gen)
    eps = torch.randn(1, 4, 32, 32, generator=gen)
    t = 601
    alpha_bar = float(pipe.scheduler.alphas_cumprod[t])
    expected_grad = _direct_gradient(pipe, encoder, objective, x_t, eps, alpha_bar)

    guidance = BrainGuidance(pipe, encoder, objective, GuidanceConfig(scale=50.0))
    pipe._guidance_scale = 1.0  # no classifier-free guidance: the UNet batch is x_t alone
    delta = guidance.correction(x_t, torch.tensor(t), eps, step=0)
    torch.testing.assert_close(delta, -math.sqrt(1 - alpha_bar) * 50.0 * expected_grad,
                               rtol=1e-4, atol=1e-9)

    surrogate = BrainGuidance(pipe, encoder, objective, GuidanceConfig(surrogate_layer=1))
    grad_surrogate, objective_surrogate = surrogate.latent_gradient(x_t, eps, alpha_bar)
    grad_full, objective_full = guidance.latent_gradient(x_t, eps, alpha_bar)
    torch.testing.assert_close(objective_surrogate, objective_full)  # value unchanged
    torch.testing.assert_close(
        grad_surrogate,
        _direct_gradient(pipe, encoder, objective, x_t, eps, alpha_bar, surrogate_layer=1),
        rtol=1e-4, atol=1e-9)
    assert not torch.allclose(grad_surrogate, grad_full, rtol=1e-2)


def test_blurred_guidance_gradient_is_scipy_gaussian_filter_of_the_pixel_gradient(parts):
    """The pixel gradient is blurred as scipy.ndimage.gaussian_filter does at the given σ, then
    carried back through the VAE decoder."""
    pipe, encoder, _, objective = parts
    gen = torch.Generator().manual_seed(11)
    x_t = torch.randn(1, 4, 32, 32, generator=gen)
    eps = torch.randn(1, 4, 32, 32, generator=gen)
    alpha_bar = float(pipe.scheduler.alphas_cumprod[401])
    sigma = 2.0

    x = x_t.clone().requires_grad_(True)
    x0 = (x - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    image = (pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    pixels = image.detach().requires_grad_(True)
    objective(encoder(pixels)).sum().backward()
    # truncate=3: the kernel radius ceil(3σ); torch's "reflect" padding is scipy's "mirror"
    blurred = scipy.ndimage.gaussian_filter(pixels.grad.double().numpy(),
                                            sigma=(0, 0, sigma, sigma), mode="mirror",
                                            truncate=3.0)
    (expected,) = torch.autograd.grad(image, x, grad_outputs=torch.from_numpy(blurred).float())

    guidance = BrainGuidance(pipe, encoder, objective, GuidanceConfig(blur_sigma=sigma))
    grad_blur, _ = guidance.latent_gradient(x_t, eps, alpha_bar)
    torch.testing.assert_close(grad_blur, expected, rtol=1e-4, atol=1e-8)
    grad_plain, _ = BrainGuidance(pipe, encoder, objective,
                                  GuidanceConfig()).latent_gradient(x_t, eps, alpha_bar)
    assert not torch.allclose(grad_plain, expected, rtol=1e-2)  # the blur matters here


def _unet_call(pipe, x_t, t, prompt="a photo"):
    """The UNet call of a classifier-free-guidance step (CFG 7.5): args and keywords."""
    cond, uncond = pipe.encode_prompt([prompt], "cpu", 1, True)
    pipe._guidance_scale = 7.5
    return (torch.cat([x_t, x_t]), torch.tensor(t)), {
        "encoder_hidden_states": torch.cat([uncond, cond]), "return_dict": False}


def _hook_delta(pipe, guidance, args, kwargs) -> torch.Tensor:
    """What the guidance hook adds to the UNet's output (first half of the CFG batch)."""
    with torch.no_grad():
        plain = pipe.unet(*args, **kwargs)[0]
        with guidance:
            steered = pipe.unet(*args, **kwargs)[0]
    return (steered - plain).chunk(2)[0]


def test_unet_path_is_the_full_backward_through_the_unet(parts):
    pipe, encoder, _, objective = parts
    x_t = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    t, scale = 501, 30.0
    args, kwargs = _unet_call(pipe, x_t, t)
    uncond, cond = kwargs["encoder_hidden_states"].chunk(2)
    alpha_bar = float(pipe.scheduler.alphas_cumprod[t])

    # the reference, written from the formula: ε(x) = ε_u(x) + 7.5 (ε_c(x) − ε_u(x)) with grad
    x = x_t.clone().requires_grad_(True)
    eps_u = pipe.unet(x, args[1], encoder_hidden_states=uncond).sample
    eps_c = pipe.unet(x, args[1], encoder_hidden_states=cond).sample
    x0 = (x - math.sqrt(1 - alpha_bar) * (eps_u + 7.5 * (eps_c - eps_u))) / math.sqrt(alpha_bar)
    image = (pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    objective(encoder(image)).sum().backward()

    guidance = BrainGuidance(pipe, encoder, objective,
                             GuidanceConfig(scale=scale, grad_path="unet"))
    delta = _hook_delta(pipe, guidance, args, kwargs)
    torch.testing.assert_close(delta, -math.sqrt(1 - alpha_bar) * scale * x.grad,
                               rtol=1e-3, atol=1e-7)
    assert len(guidance.records) == 1 and guidance.records[0].cfg_scale == 7.5


def test_x0_and_unet_paths_agree_where_alpha_bar_tends_to_one(parts):
    pipe, encoder, _, objective = parts
    x_t = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(9))

    def relative_difference(t: int) -> float:
        args, kwargs = _unet_call(pipe, x_t, t)
        x0_path, unet_path = (
            _hook_delta(pipe, BrainGuidance(pipe, encoder, objective,
                                            GuidanceConfig(scale=1.0, grad_path=path)),
                        args, kwargs)
            for path in ("x0", "unet"))
        return float((unet_path - x0_path).norm() / x0_path.norm())

    # the last DDIM step (t=1, ᾱ=0.998): ∂x̂₀/∂x_t = (I − √(1−ᾱ) ∂ε/∂x_t)/√ᾱ is nearly 1/√ᾱ
    last, early = relative_difference(1), relative_difference(801)
    assert last < 0.05
    assert early > 10 * last  # where ᾱ is small the paths differ: scales do not transfer


def test_normalize_grad_gives_unit_rms_pixel_gradients_whatever_the_units(parts):
    pipe, encoder, reducer, _ = parts
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    x_t = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(6))
    eps = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(7))
    alpha_bar = float(pipe.scheduler.alphas_cumprod[301])
    grads = {}
    for units in (1.0, 1000.0):  # the same objective in other units (e.g. another encoder's)
        objective = RoiObjective(reducer, {"roi_PPA": units, "roi_RSC": -units})
        for normalize in (False, True):
            config = GuidanceConfig(scale=1.0, blur_sigma=1.0, normalize_grad=normalize)
            guidance = BrainGuidance(pipe, encoder, objective, config)
            grads[units, normalize] = guidance.latent_gradient(x_t, eps, alpha_bar)[0]
            if normalize:
                pixels_b3hw, _ = guidance.pixel_gradient(images)
                rms_b = pixels_b3hw.pow(2).mean(dim=(1, 2, 3)).sqrt()
                torch.testing.assert_close(rms_b, torch.ones(2))
    for normalize, factor in ((True, 1.0), (False, 1000.0)):  # float32 rounding of the encoder
        expected = factor * grads[1.0, normalize]
        torch.testing.assert_close(grads[1000.0, normalize], expected, rtol=1e-3,
                                   atol=1e-4 * float(expected.abs().max()))
    # normalising rescales each image by one positive factor: the direction is kept
    for b in range(2):
        cosine = F.cosine_similarity(grads[1.0, True][b].flatten(),
                                     grads[1.0, False][b].flatten(), dim=0)
        assert cosine > 1 - 1e-5


def test_unit_rms_matches_numpy_and_leaves_zero_gradients_zero():
    grad = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad[1] = 0.0
    out = unit_rms(grad).numpy()
    values = grad.numpy()
    for b in (0, 2):
        np.testing.assert_allclose(out[b], values[b] / np.sqrt(np.mean(values[b] ** 2)))
    assert (out[1] == 0).all()


def test_bad_settings_raise(parts):
    pipe, encoder, _, objective = parts
    with pytest.raises(InputError, match="trunc_layer"):
        BrainGuidance(pipe, encoder, objective, GuidanceConfig(trunc_layer=99))
    with pytest.raises(InputError, match="surrogate_layer must be in"):
        BrainGuidance(pipe, encoder, objective, GuidanceConfig(surrogate_layer=99))
    with pytest.raises(InputError, match="no gradient path"):  # the probe reads its last block
        BrainGuidance(pipe, encoder, objective, GuidanceConfig(trunc_layer=2))
    with pytest.raises(InputError, match="not both"):
        GuidanceConfig(trunc_layer=2, surrogate_layer=2)
    with pytest.raises(InputError, match="grad path must be one of x0, unet"):
        GuidanceConfig(grad_path="vae")
    with pytest.raises(InputError, match="before the first"):
        GuidanceConfig(first_step=3, last_step=1)
    with pytest.raises(InputError, match="blur sigma"):
        GuidanceConfig(blur_sigma=-1)
    euler = load_pipeline("tiny")
    euler.scheduler = EulerDiscreteScheduler.from_config(euler.scheduler.config)
    with pytest.raises(InputError, match="EulerDiscreteScheduler"):
        BrainGuidance(euler, encoder, objective, GuidanceConfig())


def test_v_prediction_models_get_the_same_update_in_v_units(parts):
    _, encoder, _, objective = parts
    pipe = load_pipeline("tiny")
    pipe.scheduler = type(pipe.scheduler).from_config(
        pipe.scheduler.config, prediction_type="v_prediction")
    pipe._guidance_scale = 1.0
    gen = torch.Generator().manual_seed(8)
    x_t, v = torch.randn(1, 4, 32, 32, generator=gen), torch.randn(1, 4, 32, 32, generator=gen)
    t = 401
    alpha_bar = float(pipe.scheduler.alphas_cumprod[t])
    eps = math.sqrt(1 - alpha_bar) * x_t + math.sqrt(alpha_bar) * v
    grad = _direct_gradient(pipe, encoder, objective, x_t, eps, alpha_bar)
    guidance = BrainGuidance(pipe, encoder, objective, GuidanceConfig(scale=20.0))
    delta_v = guidance.correction(x_t, t, v, step=0)
    torch.testing.assert_close(
        delta_v * math.sqrt(alpha_bar), -math.sqrt(1 - alpha_bar) * 20.0 * grad,
        rtol=1e-4, atol=1e-9)
