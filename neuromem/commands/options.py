"""Options shared by commands: one name, one meaning and one help text per concept.

Every command adds its shared options through these functions, so ``--encoder``, ``--rois``,
``--out``, ``--overwrite``, ``--address``, ``--actors``, ``--seed``, ``--device``,
``--protocol`` and ``--no-progress`` mean the same everywhere. Defaults are shown in ``--help`` by the CLI's help
formatter (:class:`neuromem.cli.HelpFormatter`).
"""

from __future__ import annotations

import argparse

from neuromem.jobs.image_map import DECODE_MODES


def add_encoder(parser: argparse.ArgumentParser, *, required: bool = True,
                default: str | None = None, help_text: str = "brain encoder") -> None:
    """``--encoder SPEC``."""
    parser.add_argument(
        "--encoder", required=required and default is None, default=default, metavar="SPEC",
        help=f"{help_text}: tribev2, tribev2:/folder, clip-probe:/probe.safetensors, "
             "or the untrained test models tribev2:tiny, clip-probe:tiny")


def add_protocol(parser: argparse.ArgumentParser) -> None:
    """``--protocol NAME``: how an encoder that reads videos sees a still image.

    The default (None) is the encoder's own (``paper`` for ``tribev2``; none for encoders that
    see an image as one image). Check the choice against the encoder with
    :func:`neuromem.encoders.registry.check_spec` before any weights load.
    """
    parser.add_argument(
        "--protocol", default=None, metavar="NAME",
        help="still-image protocol of encoders that read videos (tribev2): paper (the TRIBE v2 "
             "paper's presentation: 1 s on grey), static (the image held 3 s) or fast (a 2-frame "
             "approximation); default: the encoder's own, paper for tribev2; encoders that see "
             "an image as one image (clip-probe) take none")


NETWORK_HELP = ("LIBRARY:NAME[@WEIGHTS]: timm:resnet50, torchvision:densenet121@IMAGENET1K_V1, "
                "open_clip:ViT-B-32@openai, memnet:/checkpoint, or the test network "
                "open_clip:tiny; WEIGHTS is a local file, a cached library tag, or empty for "
                "seeded random weights")


def add_network(parser: argparse.ArgumentParser, *, repeatable: bool = False,
                default: str | None = None, what: str = "image network",
                old_names: tuple[str, ...] = ()) -> None:
    """``--network SPEC``: an image network (see :mod:`neuromem.networks`).

    Without a default the option is required; the job's config checks it (so that
    ``old_names``, earlier spellings accepted and hidden from the help, count too).
    """
    kwargs = {"action": "append"} if repeatable else {"default": default}
    needed = " (required)" if default is None else ""
    parser.add_argument("--network", dest="network", metavar="SPEC",
                        help=f"{what}{', repeatable' if repeatable else ''}{needed}: "
                             f"{NETWORK_HELP}", **kwargs)
    for name in old_names:
        parser.add_argument(name, dest="network", metavar="SPEC", help=argparse.SUPPRESS,
                            **kwargs)


def add_train_workers(parser: argparse.ArgumentParser) -> None:
    """Ray Train resources: ``--workers``, ``--gpus-per-worker``, ``--cpus-per-worker``."""
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP)")
    parser.add_argument("--gpus-per-worker", type=float, default=None,
                        help="GPUs per worker (default: 1 if the cluster has GPUs, else 0)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker")


def add_rois(parser: argparse.ArgumentParser) -> None:
    """``--rois SET``."""
    parser.add_argument("--rois", default="default", metavar="SET",
                        help="ROI set: 'default' (HCP-MMP1 groups) or a YAML file")


def add_out(parser: argparse.ArgumentParser, *, what: str = "output folder",
            overwrite: bool = True, uri: bool = True) -> None:
    """``--out`` and, for outputs a rerun could mix with, ``--overwrite``."""
    where = "local path or s3://, gs:// URI" if uri else "local path"
    parser.add_argument("--out", required=True, help=f"{what} ({where})")
    if overwrite:
        parser.add_argument("--overwrite", action="store_true",
                            help="replace what --out already holds instead of refusing")


def add_cluster(parser: argparse.ArgumentParser, *, pool: bool = True,
                batch_size: int = 64) -> None:
    """``--address`` and, for image jobs, the actor-pool options."""
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    if not pool:
        return
    parser.add_argument("--actors", type=int, default=1, help="model actors (a fixed pool)")
    parser.add_argument("--gpus-per-actor", type=float, default=None,
                        help="GPUs per actor (default: 1 if the cluster has GPUs, else 0)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per actor")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch threads per actor on CPU (default: --cpus-per-actor)")
    parser.add_argument("--batch-size", type=int, default=batch_size,
                        help="images per model call")
    parser.add_argument("--decode", choices=DECODE_MODES, default="actor",
                        help="decode images in the model actors (nvJPEG on GPU) or in "
                             "separate CPU tasks")
    parser.add_argument("--decode-threads", type=int, default=4,
                        help="decoding threads per actor")


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_seed(parser: argparse.ArgumentParser, *, default: int = 0,
             what: str = "random numbers") -> None:
    """``--seed``."""
    parser.add_argument("--seed", type=int, default=default, help=f"seed of {what}")


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device`` (``auto``: CUDA when visible, else CPU)."""
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (a GPU if visible, else the CPU), cpu, cuda, "
                             "cuda:N")


def add_dtype(parser: argparse.ArgumentParser, *, what: str = "model weights") -> None:
    """``--dtype`` of a model's weights."""
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help=f"dtype of the {what}")


def add_sampling(parser: argparse.ArgumentParser, *, inference_steps: int | None = 50,
                 size_help: str = "image side in pixels (default: the model's native size)",
                 negative_prompt: bool = True, scheduler: bool = True) -> None:
    """Stable Diffusion sampling: ``--inference-steps``, ``--cfg-scale``, ``--negative-prompt``,
    ``--size``, ``--scheduler`` (denoising steps are ``--inference-steps``; ``--steps`` counts
    optimisation steps where a command has them). Commands that sample with DDIM only and
    without a negative prompt (DRaFT) leave out ``negative_prompt`` and ``scheduler``."""
    parser.add_argument("--inference-steps", type=int, default=inference_steps,
                        help="denoising steps" + ("" if inference_steps is not None
                                                  else " (default: 4 for 'tiny', else 50)"))
    parser.add_argument("--cfg-scale", type=float, default=7.5,
                        help="classifier-free guidance scale (1: none)")
    if negative_prompt:
        parser.add_argument("--negative-prompt", default=None,
                            help="negative prompt of classifier-free guidance (default: none)")
    parser.add_argument("--size", type=int, default=None, help=size_help)
    if scheduler:
        from neuromem.generation.pipeline import SCHEDULERS  # torch: generation commands only

        parser.add_argument("--scheduler", default="ddim", choices=sorted(SCHEDULERS),
                            help="noise scheduler")


def add_encoder_gradient(parser: argparse.ArgumentParser) -> None:
    """How the brain encoder's gradient reaches the pixels: ``--trunc-layer`` (stop the path at
    a depth) or ``--surrogate-layer`` (straight-through surrogate; :mod:`neuromem.encoders.base`)."""
    parser.add_argument("--trunc-layer", type=int, default=None,
                        help="encoder depth where the gradient path stops, value unchanged "
                             "(default: full depth)")
    parser.add_argument("--surrogate-layer", type=int, default=None,
                        help="straight-through surrogate: the encoder's value with the gradient "
                             "of its read-out at this depth (clip-probe encoders; default: none)")


def add_brain_guidance(parser: argparse.ArgumentParser) -> None:
    """Brain-guidance options (:class:`neuromem.generation.guidance.GuidanceConfig`)."""
    from neuromem.generation.guidance import GRAD_PATHS  # torch: only for generation commands

    parser.add_argument("--scale", type=float, required=True,
                        help="brain guidance scale (required; 0: unguided)")
    add_encoder_gradient(parser)
    parser.add_argument("--grad-path", choices=GRAD_PATHS, default="x0",
                        help="x0: noise prediction held fixed in the clean-image estimate (no "
                             "UNet backward); unet: full backward through the UNet (slower; "
                             "scales differ between the two)")
    parser.add_argument("--normalize-grad", action="store_true",
                        help="scale each step's pixel gradient to unit RMS per image, so a "
                             "scale means the same for every encoder")
    parser.add_argument("--blur-sigma", type=float, default=0.0,
                        help="Gaussian blur of the pixel gradient, in pixels (0: none)")
    parser.add_argument("--first-step", type=int, default=0, help="first guided step (from 0)")
    parser.add_argument("--last-step", type=int, default=None,
                        help="last guided step, inclusive (default: the last step)")


def add_sd_model(parser: argparse.ArgumentParser) -> None:
    """``--model``: a Stable Diffusion pipeline."""
    parser.add_argument("--model", required=True,
                        help="Stable Diffusion 1.x/2.x: local folder, cached hub id, or 'tiny' "
                             "(seeded random test components)")


def add_target(parser: argparse.ArgumentParser) -> None:
    """``--target``: ROI weights of a brain objective."""
    parser.add_argument("--target", required=True,
                        help="ROI weights to maximise, e.g. 'PPA:+1,RSC:-1' (names with or "
                             "without roi_)")


def add_generation(parser: argparse.ArgumentParser, *, seed_what: str) -> None:
    """Everything a brain-guided generation command shares: guidance, sampling, ROI set, seed,
    device, dtype and a local ``--out``."""
    add_brain_guidance(parser)
    add_sampling(parser, inference_steps=None)
    add_rois(parser)
    add_seed(parser, what=seed_what)
    add_device(parser)
    add_dtype(parser)
    add_out(parser, overwrite=False, uri=False)


def add_train_job(parser: argparse.ArgumentParser, *, seed_what: str) -> None:
    """The tail of a Ray Train command: seed, ``--out`` (+ ``--overwrite``), cluster address,
    workers and progress."""
    add_seed(parser, what=seed_what)
    add_out(parser, what="output folder")
    add_cluster(parser, pool=False)
    add_train_workers(parser)
    add_progress(parser)
