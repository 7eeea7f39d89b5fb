"""Every pipeline through `ray job submit` on a multi-node Ray cluster on 127.0.0.1.

One cluster serves the module: a CPU head (dashboard and job server) and two worker nodes with
one logical GPU each, advertising ``accelerator_type:A100`` and ``accelerator_type:H100`` as
the cloud configs in ``cluster/`` do. Each node is its own ``ray start`` process tree. Jobs are
submitted from the repository root with ``--runtime-env cluster/runtime_env.yaml``, exactly as
a user submits them, and checked by their outputs. The scoring job loses the worker node that
runs its actor half-way and must still score every row exactly once; the decomposition then
runs on its table. Tests run in file order: those needing both GPU nodes come first.

The test process never connects to this cluster (no ``ray.init``): it only uses the job CLI
over HTTP, so the session's ``ray_local`` cluster is untouched.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.stats
import torch
import yaml

from neuromem.data import synthetic
from neuromem.data.decode import decode_image
from tests.cluster.raycluster import LoopbackCluster, make_cluster

REPO = Path(__file__).resolve().parents[2]
RUNTIME_ENV = Path("cluster") / "runtime_env.yaml"  # relative: submitted from REPO
ENCODER = "clip-probe:tiny"
ACCELERATORS = ("A100", "H100")
N_IMAGES = 80
#: Three bilateral ROIs keep the tables narrow and the decomposition's per-ROI figures few.
ROI_SET = {"name": "cluster-test", "atlas": "glasser", "split_hemispheres": False,
           "rois": {"V1": ["V1"], "PPA": ["PHA1", "PHA2", "PHA3"], "RSC": ["RSC", "POS1"]}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> LoopbackCluster:
    """Head (1 CPU) + two GPU worker nodes (2 CPUs, 1 logical GPU, one accelerator type each).

    Torn down however the tests end; :meth:`LoopbackCluster.shutdown` raises if any process of
    the cluster survives.
    """
    cluster = make_cluster(tmp_path_factory.mktemp("raycluster"))
    try:
        cluster.start_head(num_cpus=1)
        for kind in ACCELERATORS:
            cluster.add_worker(f"gpu-{kind}", num_cpus=2, num_gpus=1,
                               resources={f"accelerator_type:{kind}": 1})
        yield cluster
    finally:
        cluster.shutdown()


def submit(cluster: LoopbackCluster, module: str, *args, timeout_s: float = 300) -> str:
    """``ray job submit --runtime-env cluster/runtime_env.yaml -- python -m pipelines.X``;
    asserts that the job succeeded and returns its output."""
    done = cluster.job(["python", "-m", f"pipelines.{module}", *map(str, args)], cwd=REPO,
                       runtime_env=RUNTIME_ENV, timeout_s=timeout_s)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "succeeded" in done.stdout, (
        output[-6000:]
    )
    return done.stdout


def test_finetune_job_writes_a_lora_that_diffusers_loads(cluster, tmp_path):
    from safetensors.torch import load_file

    from neuromem.generation.pipeline import load_pipeline

    out = tmp_path / "runs"
    submit(cluster, "finetune_draft", "--model", "tiny", "--encoder", ENCODER, "--workers", 1,
           "--gpus-per-worker", 0, "--batch-size", 1, "--steps", 2, "--checkpoint-every", 1, "--inference-steps", 2,
           "--size", 32, "--cfg-scale", 3.0, "--lr", 0.01, "--max-failures", 0,
           "--out", out, "--name", "draft")
    records = [json.loads(p.read_text()) | {"dir": p.parent}
               for p in (out / "ray" / "draft").glob("checkpoint_*/run.json")]
    last = max(records, key=lambda r: r["step"])
    assert last["step"] == 2 and last["world_size"] == 1 and len(last["history"]) == 2
    assert last["encoder"] == ENCODER and last["global_batch"] == 1

    state = load_file(str(last["dir"] / "pytorch_lora_weights.safetensors"))
    assert state and all(k.startswith("unet.") and "lora" in k for k in state)
    pipe = load_pipeline("tiny", seed=0)
    call = dict(prompt="a cup of coffee", num_inference_steps=2, height=32, width=32,
                guidance_scale=3.0, output_type="pt")
    with torch.no_grad():
        base = pipe(generator=torch.Generator().manual_seed(0), **call).images
        pipe.load_lora_weights(str(last["dir"]))  # diffusers' own loader
        tuned = pipe(generator=torch.Generator().manual_seed(0), **call).images
    assert (tuned - base).abs().max() > 1e-5  # the trained LoRA changes the images


def test_tune_guidance_job_places_trials_on_their_gpu_type(cluster, tmp_path):
    config = {
        "model": "tiny",
        "prompts": ["a photo of a house", "a photo of a street"],
        "images_per_prompt": 1,
        "target": "roi_PPA:+1,roi_RSC:-1",
        "guide_encoder": ENCODER,
        "eval_encoder": "tribev2:tiny",
        "fidelity": {"model": "tiny"},
        "size": 32,
        "search_space": {
            "scale": {"uniform": [1000.0, 30000.0]},
            "surrogate_layer": {"choice": [None, 2]},
            "grad_path": {"choice": ["x0", "unet"]},
            "blur_sigma": {"uniform": [0.0, 1.0]},
            "inference_steps": 2,
            "first_step_frac": 0.0,
            "last_step_frac": 1.0,
            "accelerator_type": {"grid_search": list(ACCELERATORS)},
        },
        "num_samples": 1,
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "resources": {"CPU": 1, "GPU": 1},
    }
    config_path = tmp_path / "guidance.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "tune"
    submit(cluster, "tune_guidance", "--config", config_path, "--out", out)
    trials = pd.read_parquet(out / "trials.parquet")
    assert sorted(trials["config/accelerator_type"]) == list(ACCELERATORS)
    assert (trials["node_accelerator_types"] == trials["config/accelerator_type"]).all()
    assert trials["node_id"].nunique() == len(ACCELERATORS)  # one trial on each GPU node
    assert trials["training_iteration"].between(1, len(config["prompts"])).all()  # ASHA stops
    assert (trials["images"] == trials["training_iteration"]).all()
    assert np.isfinite(trials["score"]).all() and trials["config/scale"].between(1e3, 3e4).all()
    np.testing.assert_allclose(trials["score"],
                               trials["gain"] - trials["artifact"] - trials["fidelity_loss"])
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["metrics"]["score"] == pytest.approx(trials["score"].max())
    assert best["guide"]["encoder"] == ENCODER and best["guide"]["inference_steps"] == 2
    assert best["eval_encoder"] == "tribev2:tiny"
    assert (best["guide"]["first_step"], best["guide"]["last_step"]) == (0, 1)
    assert best["guide"]["surrogate_layer"] in (None, 2) and best["guide"]["trunc_layer"] is None
    assert best["guide"]["grad_path"] in ("x0", "unet")


def table_ids(folder: Path) -> list[str]:
    """image_id of every row of the score parts in ``folder`` (duplicates kept)."""
    return [i for part in sorted(folder.glob("part-*.parquet"))
            for i in pq.read_table(part, columns=["image_id"]).column("image_id").to_pylist()]


@dataclass
class ScoreRun:
    """A scoring job that lost the worker node of its actor half-way."""

    truth: pd.DataFrame  # what the LaMem fixture holds
    out: Path  # the score table
    output: str  # `ray job submit` output
    rows_before_loss: int  # rows written when the node was killed
    lost: str  # name of the killed node


@pytest.fixture(scope="module")
def scored(cluster, tmp_path_factory) -> ScoreRun:
    """Score a LaMem fixture (vertices kept) with one encoder actor, and kill the worker node
    running that actor once its first part is written.

    Ray restarts the actor on the other GPU node and retries the lost batches; parts are named
    by their ids, so a retried batch replaces its part instead of duplicating rows. The cluster
    keeps one GPU node afterwards: the tests needing both come first in this module.
    """
    base = tmp_path_factory.mktemp("score")
    truth = synthetic.write_lamem(base / "lamem", n_images=N_IMAGES, seed=11, image_size=32)
    rois = base / "rois.yaml"
    rois.write_text(yaml.safe_dump(ROI_SET))
    out = base / "scores"
    job = cluster.job(
        ["python", "-m", "pipelines.score", "--dataset", "lamem", "--root", str(base / "lamem"),
         "--encoder", ENCODER, "--rois", str(rois), "--out", str(out), "--keep-vertices",
         "--actors", "1", "--gpus-per-actor", "1", "--batch-size", "1", "--rows-per-part", "1",
         "--no-progress"],
        cwd=REPO, runtime_env=RUNTIME_ENV, background=True,
    )
    try:
        deadline = time.monotonic() + 300
        actor = None
        while actor is None:  # the actor's process, and the worker node it was placed on
            assert job.poll() is None, job.stdout.read()[-6000:]
            assert time.monotonic() < deadline, "no scoring actor started within 300 s"
            found = [(n, n.find("ImageMapActor")) for n in cluster.nodes if n.name != "head"]
            host, actor = next(((n, p) for n, p in found if p is not None), (None, None))
            time.sleep(0.05)
        while not any(p.name.startswith("part-") for p in out.glob("*.parquet")):
            assert job.poll() is None, job.stdout.read()[-6000:]
            assert time.monotonic() < deadline, "no part written within 300 s"
            time.sleep(0.001)
        actor.suspend()  # the node hangs at once (the actor is fast) ...
        host.kill()  # ... and then disappears
        cluster.nodes.remove(host)
        rows_before_loss = len(table_ids(out))
        output, _ = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 0 and "succeeded" in output, output[-6000:]
    return ScoreRun(truth, out, output, rows_before_loss, host.name)


def test_score_job_survives_losing_the_node_of_its_actor(scored):
    from neuromem.scoring.table import open_table

    assert 0 < scored.rows_before_loss < N_IMAGES  # the node died mid-job
    assert f"scored {N_IMAGES} rows, 0 errors" in scored.output
    ids = table_ids(scored.out)
    assert len(ids) == N_IMAGES and sorted(ids) == sorted(scored.truth["image_id"])
    assert open_table(scored.out).count_rows() == N_IMAGES


def test_score_job_writes_the_encoders_responses(scored):
    from neuromem.encoders import load_encoder
    from neuromem.scoring.table import open_table, read_metadata, read_vertices

    out = scored.out
    frame = open_table(out).to_table(columns=["image_id", "memorability"]).to_pandas()
    truth = scored.truth.set_index("image_id")
    np.testing.assert_allclose(frame["memorability"],
                               truth.loc[frame["image_id"], "memorability"], rtol=1e-6)
    assert read_metadata(out)["encoder"]["spec"] == ENCODER
    # the GPU worker nodes ran the submitted code: same responses as this process computes
    encoder = load_encoder(ENCODER, "cpu")
    pixels = np.stack([decode_image((out.parent / "lamem" / "images" / i).read_bytes(),
                                    "image", encoder.input_size) for i in frame["image_id"]])
    with torch.no_grad():
        responses_nv = encoder(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_allclose(read_vertices(out).astype(np.float32), responses_nv.numpy(),
                               rtol=2e-3, atol=2e-3)


def test_decompose_job_matches_scipy_on_the_scored_table(cluster, scored, tmp_path):
    from neuromem.scoring.table import open_table, read_vertices, roi_columns

    table = scored.out
    out = tmp_path / "decomposition"
    submit(cluster, "decompose", table, "--out", out, "--rois", table.parent / "rois.yaml",
           "--vertices", "--ray", "--spins", 10, "--bootstrap", 100, "--seed", 3)
    results = json.loads((out / "results.json").read_text())
    assert results["n_images"] == N_IMAGES and results["seed"] == 3
    # LaMem has no categories: its all-null category column is no control, no partial map
    assert results["category_column"] is None and "partial" not in results["vertex_maps"]
    frame = open_table(table).to_table().to_pandas()
    rois = roi_columns(frame)
    assert sorted(rois) == sorted(f"roi_{name}" for name in ROI_SET["rois"])
    assert [r["roi"] for r in results["rois"]] == [c.removeprefix("roi_") for c in rois]
    for record, column in zip(results["rois"], rois, strict=True):
        assert record["n"] == N_IMAGES
        r, p = scipy.stats.pearsonr(frame[column], frame["memorability"])
        assert record["pearson_r"] == pytest.approx(r, abs=1e-6)
        assert record["pearson_p"] == pytest.approx(p, rel=1e-4)
        assert 0 < record["spin_p_mean_r"] <= 1
    # the vertex pass ran as Ray tasks over the table's files; compare with numpy
    responses_nv = read_vertices(open_table(table)).astype(np.float64)
    memorability = frame["memorability"].to_numpy()
    centred_nv = responses_nv - responses_nv.mean(0)
    m = memorability - memorability.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        expected_v = centred_nv.T @ m / np.sqrt((centred_nv ** 2).sum(0) * (m ** 2).sum())
    np.testing.assert_allclose(np.load(out / "vertex_r.npy"), expected_v, atol=1e-4,
                               equal_nan=True)
    assert "ray" in (out / "report.md").read_text().lower()
