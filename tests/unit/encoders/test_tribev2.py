"""TRIBE v2 encoder: equality with upstream's head and extractor, protocols, gradients, truncation."""

from __future__ import annotations

import hashlib
import importlib
import io
import sys
import types
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from transformers import VJEPA2VideoProcessor

from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import load_roi_set
from neuromem.encoders import load_encoder
from neuromem.encoders.tribe_head import FmriHead
from neuromem.encoders.tribe_protocols import PROTOCOLS, StillProtocol
from neuromem.encoders.tribev2 import (
    TINY_BACKBONE_CONFIG,
    TINY_BUILD_ARGS,
    TINY_CONFIG,
    TribeV2Encoder,
    feature_spec,
    head_config,
    layer_groups,
    load_tribev2_folder,
    random_backbone,
    random_head,
)
from neuromem.errors import InputError, MissingWeightsError

UPSTREAM = Path(__file__).resolve().parents[3] / ".upstream"
UPSTREAM_PACKAGES = ("neuralset", "neuraltrain", "tribev2", "moviepy")


class _MoviepyReader:
    """moviepy 2's ``FFMPEG_VideoReader`` frame logic, over frames decoded by PyAV.

    Its ``get_frame``, ``initialize`` (an ffmpeg seek to the frame of index
    ``int(fps * t + 1e-5)``), ``skip_frames`` and ``read_frame`` (which keeps the last frame
    past the end of the stream) follow moviepy 2.2's source; ``fps`` and ``duration`` are the
    stream's, exact for the test files (integer rates, durations in 1/100 s).
    """

    def __init__(self, path: str) -> None:
        with av.open(path) as container:
            stream = container.streams.video[0]
            self.fps = float(stream.average_rate)
            self.duration = container.duration / 1_000_000
            self.frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        self.initialize(0)

    def initialize(self, start_time: float = 0) -> None:
        self.pos = self.get_frame_number(start_time)
        self.last_read = self.read_frame()

    def read_frame(self) -> np.ndarray:
        if self.pos < len(self.frames):
            self.last_read = self.frames[self.pos]
        self.pos += 1
        return self.last_read

    def skip_frames(self, n: int) -> None:
        self.pos += n

    def get_frame(self, t: float) -> np.ndarray:
        pos = self.get_frame_number(t) + 1
        if pos == self.pos:
            return self.last_read
        if pos < self.pos or pos > self.pos + 100:
            self.initialize(t)
            return self.last_read
        self.skip_frames(pos - self.pos - 1)
        return self.read_frame()

    def get_frame_number(self, t: float) -> int:
        return int(self.fps * t + 0.00001)


class _VideoFileClip:
    """What upstream uses of ``moviepy.VideoFileClip``."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.reader = _MoviepyReader(filename)
        self.fps, self.duration = self.reader.fps, self.reader.duration
        self.size = self.reader.frames[0].shape[1::-1]
        self.audio = None

    def subclipped(self, start_time: float = 0, end_time: float | None = None) -> _VideoFileClip:
        assert start_time == 0 and end_time == self.duration
        return self

    def get_frame(self, t: float) -> np.ndarray:
        return self.reader.get_frame(t)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def upstream():
    """Upstream code from ``.upstream`` (installed by the Makefile), appended to ``sys.path``.

    ``neuralset`` is imported whole (its ``HuggingFaceVideo`` extractor runs as is, offline, on a
    local model folder). The package ``__init__`` files of ``tribev2`` and ``neuraltrain``
    (their whole training stacks, ~30 s) are skipped by registering bare package modules.
    ``moviepy`` is not installed (it needs an ffmpeg binary), so a stand-in with moviepy's frame
    logic over PyAV-decoded frames takes its place (:class:`_MoviepyReader`); upstream's
    extractor code itself is unchanged. Upstream modules are removed again afterwards.
    """
    added = str(UPSTREAM) not in sys.path
    if added:
        sys.path.append(str(UPSTREAM))
    saved = {name: module for name, module in sys.modules.items()
             if name.split(".")[0] in UPSTREAM_PACKAGES}
    for name in saved:
        del sys.modules[name]
    for name in ("tribev2", "neuraltrain", "neuraltrain.models"):
        package = types.ModuleType(name)
        package.__path__ = [str(UPSTREAM.joinpath(*name.split(".")))]
        sys.modules[name] = package
    moviepy = types.ModuleType("moviepy")
    moviepy.VideoFileClip = _VideoFileClip
    sys.modules["moviepy"] = moviepy
    video = importlib.import_module("neuralset.extractors.video")
    image = importlib.import_module("neuralset.extractors.image")
    yield types.SimpleNamespace(
        FmriEncoder=importlib.import_module("tribev2.model").FmriEncoder,
        ConfDict=importlib.import_module("exca").ConfDict,
        HuggingFaceVideo=video.HuggingFaceVideo,
        HuggingFaceImage=image.HuggingFaceImage,
        Video=importlib.import_module("neuralset.events.etypes").Video,
    )
    for name in [n for n in sys.modules if n.split(".")[0] in UPSTREAM_PACKAGES]:
        del sys.modules[name]
    sys.modules.update(saved)
    if added:
        sys.path.remove(str(UPSTREAM))


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("tribev2:tiny")


@pytest.fixture(scope="module")
def reducer():
    return RoiReducer(load_roi_set("default"))


def _upstream_head(upstream, feature_dims, n_outputs, n_output_timesteps, **config):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = upstream.FmriEncoder(**config).build(
            feature_dims=feature_dims, n_outputs=n_outputs, n_output_timesteps=n_output_timesteps
        )
    return head.eval()


RELEASED_LAYOUT = dict(  # the released head: no combiner, low-rank read-out, one shared row
    hidden=96, low_rank_head=16, combiner=None, encoder={"depth": 2, "heads": 3},
    subject_layers={"subject_dropout": 0.1, "average_subjects": True, "n_subjects": 0},
)
DEFAULT_LAYOUT = dict(  # upstream defaults: linear combiner, 3 subjects + shared row
    hidden=64, encoder={"depth": 1, "heads": 2},
    subject_layers={"subject_dropout": 0.1, "average_subjects": True, "n_subjects": 3},
)


@pytest.mark.parametrize("layout", [RELEASED_LAYOUT, DEFAULT_LAYOUT], ids=["released", "default"])
def test_head_matches_upstream(upstream, layout):
    feature_dims = {"text": (2, 8), "audio": (1, 8), "video": (2, 16)}
    reference = _upstream_head(upstream, feature_dims, 20484, 3, **layout)
    brain = {**layout, "subject_layers": {"subject_dropout": 0.1}}
    state = reference.state_dict()
    config = head_config({"brain_model_config": brain},
                         {"feature_dims": feature_dims, "n_outputs": 20484},
                         n_subject_rows=state["predictor.weights"].shape[0])
    mine = FmriHead(config).eval()
    mine.load_state_dict(state, strict=True)
    generator = torch.Generator().manual_seed(1)
    video = torch.randn(2, 2, 16, 6, generator=generator)
    text = torch.randn(2, 2, 8, 6, generator=generator)
    subjects = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        for features in ({"video": video}, {"video": video, "text": text}):
            expected = reference(types.SimpleNamespace(data={**features, "subject_id": subjects}))
            torch.testing.assert_close(mine(features, 3), expected, atol=1e-5, rtol=0)


def test_layer_groups_follow_relative_depths():
    # ViT-g: 41 hidden states; depths 0.5, 0.75, 1 pick states 20, 30, 40.
    assert layer_groups(41, [0.5, 0.75, 1.0], "group_mean") == (
        tuple(range(20, 30)), tuple(range(30, 41)))
    assert layer_groups(41, [0.5, 0.75, 1.0], None) == ((20,), (30,), (40,))
    assert layer_groups(41, [0.5, 1.0], "mean") == ((20, 40),)
    assert layer_groups(41, [2 / 3], "group_mean") == ((26,),)
    # 20 cached states (0, 2, 4, ..., 40 rounded from linspace); picks 9, 14, 19 among them
    cached = [round(40 * i / 19) for i in range(20)]
    assert layer_groups(41, [0.5, 0.75, 1.0], "group_mean", cache_n_layers=20) == (
        tuple(cached[9:14]), tuple(cached[14:20]))


@pytest.fixture(scope="module")
def release(upstream, tmp_path_factory):
    """A release folder (exca ConfDict ``config.yaml`` + Lightning ``best.ckpt``) written from an
    upstream head, whose config names a tiny V-JEPA2 saved with its video processor in a folder
    whose name contains ``vjepa2`` (upstream picks the model family by name)."""
    root = tmp_path_factory.mktemp("tribe")
    backbone_dir = root / "vjepa2-tiny"
    random_backbone(TINY_BACKBONE_CONFIG, seed=3).save_pretrained(backbone_dir)
    VJEPA2VideoProcessor(crop_size=32).save_pretrained(backbone_dir)
    brain = TINY_CONFIG["brain_model_config"]
    reference = _upstream_head(
        upstream, TINY_BUILD_ARGS["feature_dims"], 20484, TINY_BUILD_ARGS["n_output_timesteps"],
        hidden=brain["hidden"], low_rank_head=brain["low_rank_head"], combiner=None,
        max_seq_len=brain["max_seq_len"], encoder=brain["encoder"],
        subject_layers={"subject_dropout": 0.1, "average_subjects": True, "n_subjects": 0},
    )
    data = TINY_CONFIG["data"]
    config = {**TINY_CONFIG, "data": {**data, "video_feature": {
        **data["video_feature"], "image": {"model_name": str(backbone_dir)}}}}
    folder = root / "release"
    folder.mkdir()
    (folder / "config.yaml").write_text(upstream.ConfDict(config).to_yaml())
    torch.save(
        {
            "epoch": 3,
            "global_step": 1200,
            "state_dict": {f"model.{k}": v for k, v in reference.state_dict().items()},
            "model_build_args": TINY_BUILD_ARGS,
        },
        folder / "best.ckpt",
    )
    return types.SimpleNamespace(folder=folder, backbone_dir=backbone_dir, head=reference,
                                 config=config)


def _upstream_extractor(upstream, config):
    """``HuggingFaceVideo`` built from ``config`` as upstream's ``Data`` builds it: the data
    section's ``layers_to_use``, ``layer_aggregation`` and ``frequency`` override the extractor's."""
    data = config["data"]
    video = data["video_feature"]
    model_name = video["image"]["model_name"]
    if model_name not in upstream.HuggingFaceImage._REPOS:  # neuralset's offline model whitelist
        upstream.HuggingFaceImage._REPOS.append(model_name)
    image = {**video["image"], "name": "HuggingFaceImage", "layers": data["layers_to_use"],
             "layer_aggregation": data["layer_aggregation"], "infra": {"keep_in_ram": False},
             "device": "cpu"}
    return upstream.HuggingFaceVideo(image=image, frequency=data["frequency"],
                                     clip_duration=video["clip_duration"],
                                     infra={"keep_in_ram": False})


def _upstream_predictions(upstream, release, path: Path, duration: float):
    """Upstream's feature tensor of one segment and the head's kept fMRI steps.

    As ``TribeModel.predict``: one segment of ``duration_trs`` steps starting with the video,
    the extractor's features placed in it (zeros after the video), the head on the segment,
    then the 1-s steps ``t`` (``numpy.arange(0, segment - 1e-2, 1)``) the video overlaps.
    """
    segment_seconds = float(release.config["data"]["duration_trs"])
    event = upstream.Video(start=0, timeline="test", filepath=str(path))
    extractor = _upstream_extractor(upstream, release.config)
    features_ldt = extractor(events=[event], start=0.0, duration=segment_seconds)
    batch = types.SimpleNamespace(data={"video": features_ldt[None],
                                        "subject_id": torch.zeros(1, dtype=torch.long)})
    with torch.no_grad():
        outputs_vt = release.head(batch)[0]
    kept = [int(t) for t in np.arange(0, segment_seconds - 1e-2, 1.0) if t < duration]
    return features_ldt, outputs_vt[:, kept].T


def _write_mp4(path: Path, frames_thw3: np.ndarray, fps: int, lossless: bool = False) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb" if lossless else "libx264", rate=fps)
        stream.height, stream.width = frames_thw3.shape[1:3]
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        if lossless:
            stream.options = {"qp": "0"}
        for pixels in frames_thw3:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_features_and_predictions_equal_upstream(upstream, release, tmp_path):
    """A real MP4 through upstream's own ``HuggingFaceVideo`` and head, and through neuromem.

    51 frames at 30 fps (1.7 s, 3 feature steps ending at 0.567, 1.133 and 1.7 s): the first
    windows clamp to the first frame, the last asks past the end of the stream (moviepy then
    returns frame 49 again), and the frames are resized and cropped from 48x40.
    """
    frames = np.random.default_rng(5).integers(0, 256, (51, 40, 48, 3), dtype=np.uint8)
    path = tmp_path / "clip.mp4"
    _write_mp4(path, frames, fps=30)
    features_ldt, expected_tv = _upstream_predictions(upstream, release, path, duration=1.7)

    encoder = load_encoder(f"tribev2:{release.folder}")
    assert encoder.features_spec.backbone == str(release.backbone_dir)
    video = encoder.read_video(path.read_bytes())
    assert video.rows.shape == (3, 64) and video.duration == 1.7
    with torch.no_grad():
        features_nld = encoder.video_features(video)
        timecourse_tv = encoder.video_timecourse(video)
    assert features_ldt.shape == (2, 32, 32) and not features_ldt[..., 3:].any()
    torch.testing.assert_close(features_nld, features_ldt[..., :3].permute(2, 0, 1),
                               atol=1e-5, rtol=0)
    assert timecourse_tv.shape == (2, 20484)
    torch.testing.assert_close(timecourse_tv, expected_tv, atol=1e-5, rtol=0)


def test_paper_protocol_is_upstream_on_the_paper_video(upstream, release, tmp_path):
    """``paper`` = upstream run on the presentation video written to a (lossless) MP4.

    The presentation is shortened to keep the test fast (1 s grey, the image for 0.5 s, grey up
    to 2 s after onset, at 16 fps: 6 windows); the default timings follow the same code
    (their windows are checked in ``test_tribe_protocols``). The image is 36x36, the size the
    processor resizes to, so the float (differentiable) path of ``forward`` and upstream's
    uint8 path see the same pixels.
    """
    protocol = StillProtocol("paper", lead_seconds=1.0, image_seconds=0.5, trial_seconds=2.0)
    image_hw3 = np.random.default_rng(6).integers(0, 256, (36, 36, 3), dtype=np.uint8)
    frames = np.full((48, 36, 36, 3), 128, dtype=np.uint8)
    frames[16:24] = image_hw3
    path = tmp_path / "paper.mp4"
    _write_mp4(path, frames, fps=16, lossless=True)
    _, expected_tv = _upstream_predictions(upstream, release, path, duration=3.0)

    encoder = load_tribev2_folder(release.folder, protocol=protocol).requires_grad_(False)
    assert encoder.still_plan.read == slice(1, 2) and encoder.still_plan.rows.shape == (6, 64)
    images = torch.from_numpy(image_hw3).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        responses_bv = encoder(images)
    torch.testing.assert_close(responses_bv[0], expected_tv[1], atol=1e-5, rtol=0)


def test_loads_release_folder_format(release):
    encoder = load_encoder(f"tribev2:{release.folder}", protocol="static")
    assert encoder.trained is True and encoder.features_spec.layer_groups == ((2,), (3, 4))
    assert encoder.features_spec.segment_steps == 32 and encoder.clip_frames == 48
    meta = encoder.metadata()
    assert meta["protocol"] == "static" and meta["config"]["protocol"]["present_seconds"] == 3.0
    digest = hashlib.sha256((release.folder / "best.ckpt").read_bytes())
    digest.update((release.backbone_dir / "model.safetensors").read_bytes())
    assert meta["weights_sha256"] == digest.hexdigest()


def _count_windows(encoder):
    """Record the number of windows of every backbone call."""
    counts: list[int] = []
    handle = encoder.backbone.embeddings.register_forward_hook(
        lambda module, inputs, output: counts.append(inputs[0].shape[0]))
    return counts, handle


def test_shortcuts_compute_each_window_once():
    encoder = load_encoder("tribev2:tiny", protocol="paper")
    images = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(7))
    counts, handle = _count_windows(encoder)
    with torch.no_grad():
        first = encoder(images)
        assert sum(counts) == 1 + 2 * 10  # the grey window once, then 10 windows per image
        counts.clear()
        second = encoder(images[1:])
        assert sum(counts) == 10  # the grey window comes from the instance's cache
    handle.remove()
    torch.testing.assert_close(second, first[1:], atol=1e-6, rtol=0)
    # the same presentation as a 12-s clip, every window computed: the same responses
    clip = torch.full((1, 192, 3, 40, 36), 128 / 255)
    clip[:, 64:80] = images[0]
    with torch.no_grad():
        timecourse = encoder.forward_timecourse(clip, fps=16)
    assert timecourse.shape == (1, 12, 20484)
    torch.testing.assert_close(timecourse[0, 4], first[0], atol=1e-5, rtol=0)


def test_static_holds_the_image_and_fast_reads_one_tubelet():
    static = load_encoder("tribev2:tiny", protocol="static")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    counts, handle = _count_windows(static)
    with torch.no_grad():
        held = static(images)
    handle.remove()
    assert sum(counts) == 2  # 6 identical windows per image: one backbone window
    with torch.no_grad():  # the image on every frame of a 3-s clip
        clip = static.forward_clips(images[:, None].expand(-1, 48, -1, -1, -1), fps=16)
    torch.testing.assert_close(held, clip, atol=1e-6, rtol=0)
    # fast = static with 2-frame windows
    fast = load_encoder("tribev2:tiny", protocol="fast")
    backbone = random_backbone(TINY_BACKBONE_CONFIG)
    spec = feature_spec({**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "video_feature": {
        **TINY_CONFIG["data"]["video_feature"], "num_frames": 2}}}, backbone.config.num_hidden_layers)
    two_frames = TribeV2Encoder(backbone, random_head(TINY_CONFIG, TINY_BUILD_ARGS), spec, spec="two", trained=False,
                                files=[], protocol="static").eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(images), two_frames(images), atol=1e-6, rtol=0)
        assert not torch.allclose(fast(images), held, atol=1e-6)
    assert fast.metadata()["protocol"] == "fast"
    switched = static.with_protocol("fast")  # shares the weights
    assert switched.backbone is static.backbone and static.protocol == "static"
    with torch.no_grad():
        assert torch.equal(switched(images), fast(images))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_gradients_and_truncation_in_every_protocol(protocol, reducer):
    encoder = load_encoder("tribev2:tiny", protocol=protocol)
    images = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(1))

    def run(trunc_layer, model=encoder):
        x = images.clone().requires_grad_(True)
        rois_br = model.roi_responses(x, reducer, trunc_layer=trunc_layer)
        rois_br[:, reducer.names.index("PPA")].sum().backward()
        return rois_br.detach(), x.grad

    full, grad_full = run(None)
    truncated, grad_trunc = run(2)  # the tiny head reads states 2 and 3-4
    assert full.shape == (1, len(reducer.names)) and torch.isfinite(full).all()
    assert torch.isfinite(grad_full).all() and grad_full.abs().sum() > 0
    assert torch.equal(full, truncated)
    assert torch.isfinite(grad_trunc).all() and grad_trunc.abs().sum() > 0
    assert not torch.allclose(grad_full, grad_trunc)
    last, grad_last = run(encoder.n_layers)
    assert torch.equal(full, last)  # the same computation (gradients sum in any order)
    torch.testing.assert_close(grad_last, grad_full, rtol=1e-5, atol=1e-9)
    with pytest.raises(InputError, match="no gradient path"):
        encoder(images, trunc_layer=1)
    # gradient checkpointing recomputes blocks in the backward pass: the same numbers
    checkpointed = encoder.with_protocol(protocol)
    checkpointed.gradient_checkpointing = True
    for trunc_layer, (value, grad) in ((None, (full, grad_full)), (2, (truncated, grad_trunc))):
        value_ckpt, grad_ckpt = run(trunc_layer, checkpointed)
        assert torch.equal(value_ckpt, value)
        torch.testing.assert_close(grad_ckpt, grad, rtol=1e-5, atol=1e-9)


def test_clip_timecourses(encoder):
    clips = torch.rand(2, 40, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        timecourse = encoder.forward_timecourse(clips, fps=16)  # 2.5 s: 3 fMRI steps
        mean = encoder.forward_clips(clips, fps=16)
        default_rate = encoder.forward_timecourse(clips)  # 40 frames over 3 s
    assert timecourse.shape == (2, 3, 20484) and default_rate.shape == (2, 3, 20484)
    torch.testing.assert_close(mean, timecourse.mean(dim=1))
    assert not torch.allclose(timecourse[:, 0], timecourse[:, 2])
    with pytest.raises(InputError, match="shorter than half a feature step"):
        encoder.forward_clips(clips[:, :3], fps=16)


def test_missing_weights_name_the_files(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match=r"config\.yaml, best\.ckpt.*facebook/tribev2"):
        load_encoder("tribev2")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.yaml").write_text("data: {}\n")
    with pytest.raises(MissingWeightsError, match=r"best\.ckpt"):
        load_encoder(f"tribev2:{tmp_path / 'partial'}")


def test_missing_backbone_and_bad_checkpoint(release, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = tmp_path / "release"
    folder.mkdir()
    config = (release.folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(config.replace(str(release.backbone_dir),
                                                       str(tmp_path / "absent-backbone")))
    (folder / "best.ckpt").write_bytes((release.folder / "best.ckpt").read_bytes())
    with pytest.raises(MissingWeightsError, match="V-JEPA2 backbone .*absent-backbone"):
        load_encoder(f"tribev2:{folder}")
    (folder / "best.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read TRIBE v2 checkpoint"):
        load_encoder(f"tribev2:{folder}")


def test_video_file_errors(encoder):
    with pytest.raises(InputError, match="cannot decode video"):
        encoder.read_video(io.BytesIO(b"no video here").getvalue())
