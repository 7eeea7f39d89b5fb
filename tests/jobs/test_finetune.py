"""`neuromem finetune` on Ray Train: DDP equivalence, fault tolerance, diffusers checkpoints."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neuromem.cli import build_parser, main
from neuromem.errors import InputError
from neuromem.generation.draft import LORA_WEIGHT_NAME, draft_update, save_lora
from neuromem.generation.pipeline import load_pipeline
from neuromem.jobs.finetune import (
    FinetuneConfig,
    check_run,
    loop_config,
    setup_worker,
    worker_batch,
)

STEPS = 6
ARGS = [
    "finetune", "--model", "tiny", "--encoder", "clip-probe:tiny", "--workers", "2",
    "--gpus-per-worker", "0", "--batch-size", "2", "--steps", str(STEPS),
    "--inference-steps", "2", "--size", "32", "--cfg-scale", "3", "--checkpoint-every", "1",
    "--lr", "0.01", "--seed", "7", "--max-failures", "1", "--name", "run",
]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; two threads stall on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_inputs(tmp_path: Path) -> list[str]:
    rows = [{"roi": f"roi_{name}", "n": 10, "pearson_r": r, "partial_r": None}
            for name, r in [("LOC", 0.3), ("FFA", 0.2), ("RSC", -0.4), ("PPA", -0.1)]]
    (tmp_path / "results.json").write_text(json.dumps({"rois": rows}))
    (tmp_path / "prompts.txt").write_text("a red apple\n\na face\na forest\n")
    return ["--reward", str(tmp_path / "results.json"), "--prompts", str(tmp_path / "prompts.txt"),
            "--out", str(tmp_path / "runs"), "--pid-dir", str(tmp_path / "pids")]


def config_of(argv: list[str]) -> dict:
    """The training loop's config of a command line."""
    return loop_config(FinetuneConfig.from_args(build_parser(argv).parse_args(argv)))


def wait_for(condition, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def checkpoint_registered(run_dir: Path) -> bool:
    """Whether the run's checkpoint-manager snapshot names a latest checkpoint."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return False
    return snapshot.get("latest_checkpoint_result") is not None


def single_process_reference(argv: list[str]) -> dict[str, torch.Tensor]:
    """The same global batches on one process, no Ray."""
    config = config_of(argv)
    state = setup_worker(config, torch.device("cpu"))
    for step in range(config["steps"]):
        batch = worker_batch(state, config, step, rank=0, world=1)
        draft_update(state.pipe, state.reward, state.optimizer, state.params, batch,
                     state.settings)
    return state


def test_finetune_two_workers_survive_a_killed_worker(ray_local, tmp_path, capsys):
    argv = ARGS + write_inputs(tmp_path)
    (tmp_path / "pids").mkdir()
    codes = []
    run = threading.Thread(target=lambda: codes.append(main(argv)))
    run.start()
    # kill rank 0 with SIGKILL once Ray Train has registered the first checkpoint
    wait_for(lambda: checkpoint_registered(tmp_path / "runs" / "ray" / "run"))
    os.kill(int((tmp_path / "pids" / "rank0.0.pid").read_text()), signal.SIGKILL)
    run.join()
    assert codes == [0]
    captured = capsys.readouterr()
    out = captured.out  # Ray may print a worker-death notice before the summary
    # the progress bar: steps done of all, the reward, and the rate (tqdm: s/step or step/s)
    assert "finetune: 100%" in captured.err and f"{STEPS}/{STEPS}" in captured.err
    assert "reward=" in captured.err
    assert "s/step" in captured.err or "step/s" in captured.err
    final = Path(json.loads(out[out.index('{\n  "checkpoint"'):])["checkpoint"])
    assert (tmp_path / "pids" / "rank0.1.pid").exists()  # the worker group was restarted
    record = json.loads((final / "run.json").read_text())
    assert record["step"] == STEPS and record["world_size"] == 2 and record["seed"] == 7
    assert record["reward"]["weights"] == {"LOC": 0.3, "FFA": 0.2, "RSC": -0.4, "PPA": -0.1}
    assert record["prompts"] == ["a red apple", "a face", "a forest"]
    history = record["history"]
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    assert 0 < history[-1]["resumed_from"] < STEPS  # resumed from a checkpoint, not from 0

    # the distributed, interrupted run makes the same updates as one uninterrupted process
    reference = single_process_reference(argv)
    with torch.no_grad():
        expected_dir = tmp_path / "reference"
        save_lora(reference.pipe.unet, expected_dir)
    got = load_file(str(final / LORA_WEIGHT_NAME))
    expected = load_file(str(expected_dir / LORA_WEIGHT_NAME))
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-3, atol=1e-6)
    assert any(float(v.abs().max()) > 0 for k, v in got.items() if ".lora.up." in k)

    # diffusers loads the checkpoint's LoRA: its UNet then predicts what the trained one does
    pipe = load_pipeline("tiny", seed=7)
    generator = torch.Generator().manual_seed(0)
    latents, embeds = torch.randn(1, 4, 16, 16, generator=generator), torch.randn(1, 77, 32)
    with torch.no_grad():
        before = pipe.unet(latents, 500, encoder_hidden_states=embeds).sample
        pipe.load_lora_weights(str(final))
        after = pipe.unet(latents, 500, encoder_hidden_states=embeds).sample
        trained = reference.pipe.unet(latents, 500, encoder_hidden_states=embeds).sample
    assert (after - before).abs().max() > 1e-6
    torch.testing.assert_close(after, trained, rtol=1e-3, atol=1e-5)

    # an existing run needs --resume; resuming a missing one is an error
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    with pytest.raises(InputError, match="nothing to resume"):
        check_run(str(tmp_path / "runs"), "other", resume=True)


def test_tiny_model_means_a_tiny_run(tmp_path):
    """``--model tiny`` without sampling options: 4 denoising steps at the native 64 px."""
    config = config_of(["finetune", "--model", "tiny", "--encoder", "clip-probe:tiny", "--steps",
                        "1", "--out", str(tmp_path / "runs")])
    assert config["settings"]["num_inference_steps"] == 4
    state = setup_worker(config, torch.device("cpu"))
    assert (state.settings.height, state.settings.width) == (64, 64)
    batch = worker_batch(state, config, 0, rank=0, world=1)
    assert batch.latents_bchw.shape[-2:] == (32, 32)  # 64 px through the VAE's factor 2
    config = config_of(["finetune", "--model", "/some/sd", "--encoder", "clip-probe:tiny",
                        "--steps", "1", "--out", str(tmp_path / "runs")])
    assert config["settings"]["num_inference_steps"] == 50


def test_surrogate_layer_reaches_the_reward_and_excludes_truncation(tmp_path, capsys):
    """--surrogate-layer means what it means for guide: the CLIP probe's straight-through
    gradient (its --trunc-layer below full depth is refused, leaving no gradient path)."""
    argv = ["finetune", "--model", "tiny", "--encoder", "clip-probe:tiny", "--steps", "1",
            "--out", str(tmp_path / "runs")]
    state = setup_worker(config_of([*argv, "--surrogate-layer", "2"]), torch.device("cpu"))
    assert state.reward.gradient == {"surrogate_layer": 2}
    assert main([*argv, "--trunc-layer", "2", "--surrogate-layer", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not both" in err and len(err.splitlines()) == 1


def test_score_table_of_another_encoder_is_refused(tmp_path, capsys):
    """The reward's mean and std must come from the reward's own encoder and ROI set."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from neuromem.cortex.rois import load_roi_set
    from neuromem.scoring.table import build_metadata, write_metadata

    rois = load_roi_set("default")
    settings = {"encoder": "tribev2:tiny", "rois": rois.to_dict()["indices_sha256"],
                "rois_name": "default"}
    table = pa.table({c: [0.0, 1.0, 2.0] for c in rois.column_names})
    (tmp_path / "scores").mkdir()
    pq.write_table(write_metadata(table, build_metadata(encoder={"spec": "tribev2:tiny"},
                                                        settings=settings)),
                   tmp_path / "scores" / "part-0.parquet")
    code = main(["finetune", "--model", "tiny", "--encoder", "clip-probe:tiny", "--steps", "1",
                 "--score-table", str(tmp_path / "scores"), "--out", str(tmp_path / "runs")])
    assert code == 2
    err = capsys.readouterr().err
    assert "'tribev2:tiny'" in err and "'clip-probe:tiny'" in err
    assert not (tmp_path / "runs").exists()  # refused before anything started
