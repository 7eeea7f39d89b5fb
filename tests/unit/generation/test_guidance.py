"""Brain-guided sampling on the tiny Stable Diffusion pipeline with the tiny CLIP probe."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import load_roi_set
from neuromem.encoders import load_encoder
from neuromem.errors import InputError
from neuromem.generation.guidance import BrainGuidance, GuidanceConfig, generate
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


def _direct_gradient(pipe, encoder, objective, x_t, eps, alpha_bar, trunc_layer=None):
    """∂objective/∂x_t through x̂₀, the VAE and the encoder, in one autograd pass."""
    x_t = x_t.clone().requires_grad_(True)
    x0 = (x_t - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    image = (pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    objective(encoder(image, trunc_layer=trunc_layer)).sum().backward()
    return x_t.grad


def test_correction_is_the_braindive_update_with_blur_and_truncation(parts):
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

    truncated = BrainGuidance(pipe, encoder, objective, GuidanceConfig(trunc_layer=1))
    grad_trunc, objective_trunc = truncated.latent_gradient(x_t, eps, alpha_bar)
    grad_full, objective_full = guidance.latent_gradient(x_t, eps, alpha_bar)
    torch.testing.assert_close(objective_trunc, objective_full)  # value unchanged
    torch.testing.assert_close(
        grad_trunc, _direct_gradient(pipe, encoder, objective, x_t, eps, alpha_bar, 1),
        rtol=1e-4, atol=1e-9)
    assert not torch.allclose(grad_trunc, grad_full, rtol=1e-2)

    blurred = BrainGuidance(pipe, encoder, objective, GuidanceConfig(blur_sigma=2.0))
    grad_blur, _ = blurred.latent_gradient(x_t, eps, alpha_bar)
    assert not torch.allclose(grad_blur, grad_full, rtol=1e-2)


def test_bad_settings_raise(parts):
    pipe, encoder, _, objective = parts
    with pytest.raises(InputError, match="trunc_layer"):
        BrainGuidance(pipe, encoder, objective, GuidanceConfig(trunc_layer=99))
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
