"""DRaFT on the tiny Stable Diffusion pipeline: gradients, references, LoRA files."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from neuromem.errors import InputError, UnknownNameError
from neuromem.generation.draft import (
    DraftSettings,
    draft_loss,
    draft_update,
    load_lora_into,
    make_batch,
    make_optimizer,
    prepare_pipeline,
    save_lora,
)
from neuromem.generation.pipeline import load_pipeline

PROMPTS = ["a red apple", "a mountain lake"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; two threads stall on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def redness(images_b3hw: torch.Tensor) -> torch.Tensor:
    """A simple differentiable reward: mean red minus mean blue."""
    return images_b3hw[:, 0].mean((1, 2)) - images_b3hw[:, 2].mean((1, 2))


def settings(**overrides) -> DraftSettings:
    base = dict(num_inference_steps=2, height=32, width=32, guidance_scale=3.0)
    return DraftSettings(**{**base, **overrides})


def lora_pipe(draft_settings: DraftSettings, seed: int = 0):
    torch.manual_seed(seed)
    pipe = load_pipeline("tiny", seed=0)
    params = prepare_pipeline(pipe, draft_settings)
    return pipe, params


def perturb_lora_b(pipe, seed: int = 1) -> None:
    """Give lora_B non-zero values, so lora_A's gradient is not trivially zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))


def lora_grads(pipe) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in pipe.unet.named_parameters() if p.requires_grad}


def test_only_lora_gets_gradient_and_only_lora_b_at_first_step():
    s = settings()
    pipe, params = lora_pipe(s)
    assert {id(p) for p in params} == {
        id(p) for n, p in pipe.unet.named_parameters() if "lora_" in n
    }
    loss, metrics = draft_loss(pipe, redness, make_batch(pipe, PROMPTS, [0, 1], 0, s), s)
    loss.backward()
    assert metrics["reward"] == pytest.approx(-loss.item(), rel=1e-6)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        for name, p in module.named_parameters():
            if "lora_" not in name:
                assert not p.requires_grad and p.grad is None, name
    grads = lora_grads(pipe)
    assert len(grads) == len(params) > 0
    for name, grad in grads.items():
        if "lora_B" in name:
            assert grad.abs().sum() > 0, name
        else:  # gaussian init: B = 0, so dL/dA = B^T (...) = 0 exactly
            assert "lora_A" in name and torch.count_nonzero(grad) == 0, name


def reference_gradients(pipe, batch, s: DraftSettings, k: int | None):
    """Full backpropagation with an independent DDIM loop, no gradient checkpointing.

    The outputs of all but the last ``k`` steps are detached (``k=None``: nothing detached).
    """
    pipe.unet.disable_gradient_checkpointing()
    pipe.vae.disable_gradient_checkpointing()
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(s.num_inference_steps)
    latents = batch.latents_bchw
    n = len(scheduler.timesteps)
    for i, t in enumerate(scheduler.timesteps):
        out = pipe.unet(torch.cat([latents] * 2), t,
                        encoder_hidden_states=torch.cat([batch.uncond_btd, batch.cond_btd])).sample
        eps_u, eps_c = out.chunk(2)
        latents = scheduler.step(eps_u + s.guidance_scale * (eps_c - eps_u), t, latents).prev_sample
        if k is not None and i < n - k:
            latents = latents.detach()
    images = (pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample / 2 + 0.5)
    loss = -redness(images.clamp(0, 1)).mean()
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    names = [n for n, p in pipe.unet.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    pipe.unet.enable_gradient_checkpointing()
    pipe.vae.enable_gradient_checkpointing()
    return dict(zip(names, grads, strict=True))


@pytest.mark.parametrize("method,k", [("draft1", 1), ("draftk", 2)])
def test_truncated_gradient_equals_full_backprop_with_earlier_steps_detached(method, k):
    s = settings(method=method, k=k, num_inference_steps=3)
    pipe, _ = lora_pipe(s)
    perturb_lora_b(pipe)
    batch = make_batch(pipe, PROMPTS, [0, 1], 0, s)
    loss, _ = draft_loss(pipe, redness, batch, s)
    loss.backward()
    got = lora_grads(pipe)
    expected = reference_gradients(pipe, batch, s, k)
    full = reference_gradients(pipe, batch, s, None)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-9)
    # the truncation matters: backpropagating through every step gives another gradient
    diff = sum(float((full[n] - expected[n]).abs().sum()) for n in expected)
    assert diff > 1e-3 * sum(float(g.abs().sum()) for g in expected.values())


def test_sampler_matches_diffusers_pipeline():
    s = settings()
    pipe, _ = lora_pipe(s)
    batch = make_batch(pipe, PROMPTS, [3, 4], 0, s)
    seen = []

    def capture(images_b3hw):
        seen.append(images_b3hw.detach())
        return redness(images_b3hw)

    with torch.no_grad():
        draft_loss(pipe, capture, batch, s)
        expected = pipe(
            prompt_embeds=batch.cond_btd, negative_prompt_embeds=batch.uncond_btd,
            latents=batch.latents_bchw.clone(), num_inference_steps=s.num_inference_steps,
            guidance_scale=s.guidance_scale, height=s.height, width=s.width, output_type="pt",
        ).images
    torch.testing.assert_close(seen[0], expected, rtol=1e-4, atol=1e-5)


def test_reward_rises_over_a_few_dozen_steps():
    s = settings(learning_rate=3e-3, weight_decay=0.0)
    pipe, params = lora_pipe(s)
    optimizer = make_optimizer(params, s)
    batch = make_batch(pipe, PROMPTS, [0, 1], 0, s)
    rewards = [draft_update(pipe, redness, optimizer, params, batch, s)["reward"]
               for _ in range(30)]
    with torch.no_grad():
        final = -float(draft_loss(pipe, redness, batch, s)[0])
    assert final > rewards[0] + 0.05, rewards
    assert sum(b > a for a, b in zip(rewards, rewards[1:], strict=False)) >= 20


def test_draftlv_averages_renoised_copies():
    s = settings(method="draftlv", lv_samples=2)
    pipe, _ = lora_pipe(s)
    batch = make_batch(pipe, PROMPTS, [0, 1], 0, s)
    assert batch.renoise_nbchw.shape == (2, 2, 4, 16, 16)
    loss, metrics = draft_loss(pipe, redness, batch, s)
    loss.backward()
    assert any(float(g.abs().sum()) > 0 for g in lora_grads(pipe).values())
    # the average of the two single-copy losses, each on one re-noising draw
    singles = []
    for j in range(2):
        one = settings(method="draftlv", lv_samples=1)
        part = make_batch(pipe, PROMPTS, [0, 1], 0, one)
        part.renoise_nbchw = batch.renoise_nbchw[j:j + 1]
        with torch.no_grad():
            singles.append(float(draft_loss(pipe, redness, part, one)[0]))
    assert loss.item() == pytest.approx(sum(singles) / 2, rel=1e-5)


def test_penalty_is_zero_at_base_and_pulls_back_towards_it():
    s = settings(penalty=1.0)
    pipe, params = lora_pipe(s)
    batch = make_batch(pipe, PROMPTS, [0, 1], 0, s)
    _, metrics = draft_loss(pipe, redness, batch, s)
    assert metrics["penalty"] == 0.0  # lora_B = 0: the adapted model is the base model
    perturb_lora_b(pipe)

    def zero(images_b3hw):
        return 0.0 * images_b3hw.sum((1, 2, 3))

    optimizer = torch.optim.Adam(params, lr=1e-3)  # small steps against the gradient
    before = draft_update(pipe, zero, optimizer, params, batch, s)["penalty"]
    with torch.no_grad():
        after = draft_loss(pipe, zero, batch, s)[1]["penalty"]
    assert before > 0
    assert after < before


def test_saved_lora_loads_with_diffusers(tmp_path):
    s = settings()
    pipe, params = lora_pipe(s)
    perturb_lora_b(pipe)
    save_lora(pipe.unet, tmp_path)
    batch = make_batch(pipe, PROMPTS[:1], [0], 0, s)
    kwargs = dict(prompt_embeds=batch.cond_btd, negative_prompt_embeds=batch.uncond_btd,
                  num_inference_steps=2, guidance_scale=3.0, height=32, width=32,
                  output_type="pt")
    with torch.no_grad():
        trained = pipe(latents=batch.latents_bchw.clone(), **kwargs).images
        fresh = load_pipeline("tiny", seed=0)
        base = fresh(latents=batch.latents_bchw.clone(), **kwargs).images
        fresh.load_lora_weights(str(tmp_path))
        loaded = fresh(latents=batch.latents_bchw.clone(), **kwargs).images
    assert (trained - base).abs().max() > 1e-4
    torch.testing.assert_close(loaded, trained, rtol=1e-4, atol=1e-5)
    # and back into a training pipeline (resuming)
    other, _ = lora_pipe(s, seed=5)
    load_lora_into(other.unet, tmp_path)
    for (name, a), (_, b) in zip(pipe.unet.named_parameters(), other.unet.named_parameters(),
                                 strict=True):
        if "lora_" in name:
            torch.testing.assert_close(a, b)


def test_bad_settings_raise():
    with pytest.raises(UnknownNameError, match="draft1"):
        DraftSettings(method="ddpo")
    with pytest.raises(InputError, match="k=5"):
        DraftSettings(method="draftk", k=5, num_inference_steps=3)
    s = settings(height=30)
    pipe, _ = lora_pipe(settings())
    with pytest.raises(InputError, match="multiples"):
        make_batch(pipe, PROMPTS, [0, 1], 0, s)
