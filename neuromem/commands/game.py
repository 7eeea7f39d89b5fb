"""The memory game: make a study, serve it, export human memorability, compare conditions, simulate.

Subcommands::

    neuromem game make STUDY.yaml --condition base=gen/base --condition lora=gen/lora \\
        --fillers fillers/                       # pairs by file name: gen/base/p01.png ~ gen/lora/p01.png
    neuromem game serve STUDY.yaml --db sqlite:///study.db --port 8000
    neuromem game export STUDY.yaml --db sqlite:///study.db --out human.parquet
    neuromem game compare STUDY.yaml --db sqlite:///study.db --out comparison/
    neuromem game simulate STUDY.yaml --db sqlite:///sim.db --participants 50
    neuromem game simulate --plan --effect 0.05 --participants 60 --pairs 40
    neuromem game demo --out game_demo/          # a simulated study end to end, offline

Participants open ``http://HOST:PORT/?PROLIFIC_PID=...&STUDY_ID=...&SESSION_ID=...`` (or
MTurk's ``workerId``/``assignmentId``); the page shows the completion code at the end. The
admin view (``GET /admin`` with ``Authorization: Bearer TOKEN``) reads the token kept in
``--admin-token-file`` (created with a random token, mode 0600, and never printed).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from neuromem.commands import options
from neuromem.errors import InputError
from neuromem.game.server import SESSIONS_PER_MINUTE

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Subcommands of ``neuromem game``."""
    from neuromem.cli import HelpFormatter

    sub = parser.add_subparsers(dest="game_command", required=True, metavar="SUBCOMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)

    make = command("make", "write a study file from folders of images")
    make.add_argument("study", help="study YAML to write")
    make.add_argument("--condition", action="append", default=[], metavar="NAME=FOLDER",
                      help="measured images of a condition (repeatable); files of the same "
                           "name in two conditions are a pair")
    make.add_argument("--fillers", default=None, help="folder of filler images")
    make.add_argument("--name", default=None, help="study name (default: the file's stem)")
    make.add_argument("--length", type=int, default=186, help="trials per participant")
    make.add_argument("--targets", type=int, default=22, help="targets per participant")
    make.add_argument("--target-lag", type=int, nargs=2, default=[91, 109], metavar=("LOW", "HIGH"),
                      help="positions between a target's two showings")
    make.add_argument("--vigilance", type=int, default=12, help="vigilance repeats per participant")
    make.add_argument("--vigilance-lag", type=int, nargs=2, default=[1, 7],
                      metavar=("LOW", "HIGH"), help="positions between vigilance showings")
    make.add_argument("--image-ms", type=int, default=600, help="display time of each image, ms")
    make.add_argument("--gap-ms", type=int, default=800, help="blank after each image, ms")
    make.add_argument("--completion-code", default=None,
                      help="code shown at the end (default: derived from the name)")

    serve = command("serve", "serve a study (the page, the API, the admin view)")
    serve.add_argument("study", help="study YAML")
    _add_db(serve)
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--sessions-per-minute", type=int, default=SESSIONS_PER_MINUTE,
                       help="new sessions one client address may start in any minute; more are "
                            "refused with 429 (0: no limit; default %(default)s)")
    _add_admin(serve)
    options.add_seed(serve, what="the participants' sequences")

    export = command("export", "per-image human memorability as a Parquet table")
    export.add_argument("study", help="study YAML")
    _add_db(export)
    export.add_argument("--out", required=True, help="Parquet file to write (local path or URI)")
    export.add_argument("--splits", type=int, default=100, help="split-half resamples")
    export.add_argument("--annotate", default=None, metavar="TABLE",
                        help="also write a copy of this score table with the human columns, for "
                             "`neuromem decompose --memorability memorability_human`")
    export.add_argument("--annotated-out", default=None,
                        help="where the annotated copy goes (default: OUT's folder/annotated)")
    options.add_seed(export, what="the split-half draws")

    compare = command("compare", "engineered images vs their base twins (mixed logit, "
                                 "permutation test, report)")
    compare.add_argument("study", help="study YAML")
    _add_db(compare)
    options.add_out(compare, what="report folder", overwrite=False)
    compare.add_argument("--base", default="base", help="reference condition")
    compare.add_argument("--engineered", default=None,
                         help="tested condition (default: the only other one)")
    compare.add_argument("--permutations", type=int, default=10_000,
                         help="sign flips of the permutation test")
    options.add_seed(compare, what="the permutation test and the bootstrap")

    simulate = command("simulate", "simulated participants through the real HTTP API, or "
                                   "--plan a study's size")
    simulate.add_argument("study", nargs="?", default=None, help="study YAML (not with --plan)")
    simulate.add_argument("--db", default=None,
                          help="database of an in-process server (default: sqlite in the "
                               "study's folder, sim.db)")
    simulate.add_argument("--url", default=None,
                          help="base URL of a running server instead of an in-process one")
    simulate.add_argument("--participants", type=int, default=50, help="participants")
    simulate.add_argument("--concurrency", type=int, default=50, help="participants at once")
    simulate.add_argument("--memorability", default=None, metavar="CSV",
                          help="true memorability per image (image_id,memorability); default: "
                               "drawn from Beta(6, 4) with --seed and written to "
                               "true_memorability.csv beside STUDY")
    simulate.add_argument("--noise", type=float, default=0.5,
                          help="SD of each participant's log-odds bias")
    simulate.add_argument("--false-alarm", type=float, default=0.05,
                          help="probability of responding to a first showing")
    simulate.add_argument("--vigilance-hit", type=float, default=0.95,
                          help="probability of detecting a short-lag repeat")
    simulate.add_argument("--plan", action="store_true",
                          help="power of a paired study by simulation (no server)")
    simulate.add_argument("--effect", type=float, default=0.05,
                          help="--plan: hit-rate difference engineered minus base")
    simulate.add_argument("--pairs", type=int, default=40, help="--plan: image pairs")
    simulate.add_argument("--simulations", type=int, default=200, help="--plan: simulated studies")
    options.add_seed(simulate, what="the simulated participants")

    demo = command("demo", "a simulated study end to end, offline: make, serve, play, export, "
                           "compare")
    options.add_out(demo, what="demo folder", overwrite=False, uri=False)
    demo.add_argument("--participants", type=int, default=80, help="simulated participants")
    options.add_seed(demo, what="the images, the truth and the participants")


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True,
                        help="database URL: sqlite:///study.db or postgresql://user@host/db")


def _add_admin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin-token-file", default=None,
                        help="file holding the admin token (default: STUDY's folder/admin_token; "
                             "created with a random token when missing)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen subcommand."""
    return {"make": run_make, "serve": run_serve, "export": run_export, "compare": run_compare,
            "simulate": run_simulate, "demo": run_demo}[args.game_command](args)


def _images_in(folder: str) -> list[Path]:
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"{folder} is not a folder")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    return files


def run_make(args: argparse.Namespace) -> int:
    from neuromem.game.study import make_study

    images: list[dict[str, Any]] = []
    for item in args.condition:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise InputError(f"--condition takes NAME=FOLDER, got {item!r}")
        root = Path(folder)
        images += [{"image_id": f"{name}/{p.relative_to(root).with_suffix('').as_posix()}",
                    "path": p, "condition": name,
                    "pair": p.relative_to(root).with_suffix("").as_posix()}
                   for p in _images_in(folder)]
    if args.fillers:
        root = Path(args.fillers)
        images += [{"image_id": f"filler/{p.relative_to(root).with_suffix('').as_posix()}",
                    "path": p} for p in _images_in(args.fillers)]
    if len(args.condition) < 2:  # one condition: images are measured on their own, not paired
        for image in images:
            image.pop("pair", None)
    study = make_study(
        args.study, name=args.name or Path(args.study).stem, images=images,
        completion_code=args.completion_code,
        timing={"image_ms": args.image_ms, "gap_ms": args.gap_ms},
        sequence={"length": args.length, "targets": args.targets,
                  "target_lag": list(args.target_lag), "vigilance": args.vigilance,
                  "vigilance_lag": list(args.vigilance_lag)})
    print(f"wrote {args.study}: {len(study.target_ids)} measured images, "
          f"{len(study.filler_ids)} fillers")
    return 0


def _admin_token_path(args: argparse.Namespace) -> Path:
    return Path(args.admin_token_file or Path(args.study).parent / "admin_token")


def run_serve(args: argparse.Namespace) -> int:
    from neuromem.game import db
    from neuromem.game.app import create_app
    from neuromem.game.server import admin_token, serve
    from neuromem.game.study import load_study

    if args.sessions_per_minute < 0:
        raise InputError("--sessions-per-minute must be 0 (no limit) or positive")
    study = load_study(args.study)
    engine = db.connect(args.db)
    token_file = _admin_token_path(args)
    app = create_app(study, engine, admin_token(token_file), seed=args.seed,
                     sessions_per_minute=args.sessions_per_minute)
    print(f"serving study {study.name} on http://{args.host}:{args.port}/?PROLIFIC_PID=... "
          f"(admin token in {token_file}); Ctrl-C stops")
    serve(app, args.host, args.port)
    return 0


def _study_responses(args: argparse.Namespace):
    """The study and every stored response of it (one line when there is none yet)."""
    from neuromem.game import db
    from neuromem.game.study import load_study

    study = load_study(args.study)
    responses = db.responses_frame(db.connect(args.db), study)
    if responses.empty:
        raise InputError(f"study {study.name} has no responses in this database yet")
    return study, responses


def _export(study, responses, out: str, *, n_splits: int = 100, seed: int = 0) -> dict:
    """:func:`neuromem.game.export.export_human` with the study's flag thresholds, and its lags
    corrected to the middle of its ``target_lag``."""
    from neuromem.game.export import export_human

    return export_human(responses, out, study=study.name, n_splits=n_splits, seed=seed,
                        reference_lag=sum(study.sequence.target_lag) / 2,
                        flag_thresholds=asdict(study.flags))


def run_export(args: argparse.Namespace) -> int:
    from neuromem.game.export import annotate_scores

    study, responses = _study_responses(args)
    record = _export(study, responses, args.out, n_splits=args.splits, seed=args.seed)
    halves = record["split_half"]
    print(f"wrote {args.out}: {record['n_images']} images from {record['n_participants']} "
          f"participants ({len(record['flagged'])} flagged, left out); split-half Spearman "
          f"{halves['rho']:.3f} (Spearman-Brown {halves['rho_corrected']:.3f})")
    if args.annotate:
        out = args.annotated_out or str(Path(args.out).parent / "annotated")
        annotate_scores(args.annotate, args.out, out)
        print(f"wrote {out}: {args.annotate} with memorability_human")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from neuromem.game import compare, scoring

    study, responses = _study_responses(args)
    flags = scoring.participant_flags(responses, **asdict(study.flags))
    trials = compare.hit_trials(scoring.drop_flagged(responses, flags))
    result = compare.compare_conditions(trials, base=args.base, engineered=args.engineered,
                                        n_permutations=args.permutations, seed=args.seed)
    compare.write_comparison_report(result, args.out, sources={
        i.image_id: str(i.path) for i in study.images})
    summary = result.to_dict()
    print(f"{summary.get('engineered')} vs {summary.get('base')}: mean hit-rate difference "
          f"{summary['mean_difference']:+.3f}, permutation p {summary['permutation']['p_value']:.3g}"
          f"; wrote {args.out}/report.html")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    if args.plan:
        from neuromem.game.compare import simulated_power

        power = simulated_power(args.effect, args.participants, args.pairs,
                                n_simulations=args.simulations, seed=args.seed)
        print(f"power {power.power:.2f} (95 % CI {power.ci_low:.2f}-{power.ci_high:.2f}) for a "
              f"hit-rate effect of {args.effect:+.3f} with {args.participants} participants and "
              f"{args.pairs} pairs ({power.n_simulations} simulated studies)")
        return 0
    if args.study is None:
        raise InputError("give a STUDY to simulate, or --plan")
    from neuromem.game.simulate import Behaviour, simulate
    from neuromem.game.study import load_study

    study = load_study(args.study)
    truth = _true_memorability(study, args.memorability, args.seed)
    if args.memorability is None:
        drawn = _write_truth(Path(args.study).parent / "true_memorability.csv", truth)
        print(f"wrote {drawn}: the simulated true memorability")
    behaviour = Behaviour(noise=args.noise, vigilance_hit=args.vigilance_hit,
                          false_alarm=args.false_alarm)
    if args.url:
        records = simulate(args.url, truth, args.participants, behaviour=behaviour,
                           concurrency=args.concurrency, seed=args.seed)
    else:
        records = _simulate_locally(study, args.db or f"sqlite:///{Path(args.study).parent}/sim.db",
                                    truth, args.participants, behaviour, args.concurrency,
                                    args.seed)
    print(f"{len(records)} simulated participants played {sum(r['trials'] for r in records)} "
          "trials")
    return 0


def _write_truth(path: Path, truth: dict[str, float]) -> Path:
    """Write simulated true memorability as the CSV ``--memorability`` reads."""
    import pandas as pd

    pd.DataFrame({"image_id": list(truth), "memorability": list(truth.values())}).to_csv(
        path, index=False)
    return path


def _true_memorability(study, csv: str | None, seed: int) -> dict[str, float]:
    if csv is None:
        rng = np.random.default_rng(seed)
        return {image_id: float(m) for image_id, m in
                zip(study.target_ids, rng.beta(6, 4, len(study.target_ids)), strict=True)}
    import pandas as pd

    try:
        frame = pd.read_csv(csv)
        return dict(zip(frame["image_id"].astype(str), frame["memorability"].astype(float),
                        strict=True))
    except (OSError, KeyError, ValueError) as error:
        raise InputError(f"--memorability {csv}: needs columns image_id, memorability "
                         f"({error})") from None


def _simulate_locally(study, url: str, truth, participants: int, behaviour, concurrency: int,
                      seed: int):
    import secrets

    from neuromem.game import db
    from neuromem.game.app import create_app
    from neuromem.game.server import background
    from neuromem.game.simulate import simulate

    engine = db.connect(url)
    # the only client is this process's simulation: no session rate limit
    with background(create_app(study, engine, secrets.token_urlsafe(32), seed=seed,
                               sessions_per_minute=0)) as base:
        return simulate(base, truth, participants, behaviour=behaviour, concurrency=concurrency,
                        seed=seed)


def run_demo(args: argparse.Namespace) -> int:
    """Generated base/engineered image pairs and fillers, a study, an in-process server on
    127.0.0.1 with SQLite, simulated participants (the engineered twins truly more memorable),
    then the export and the comparison."""
    from PIL import Image
    from scipy import stats

    from neuromem.game import compare, db
    from neuromem.game.export import read_scores
    from neuromem.game.simulate import Behaviour
    from neuromem.game.study import make_study

    out = Path(args.out)
    rng = np.random.default_rng(args.seed)
    images = []
    n_pairs = 12
    for kind, count in (("base", n_pairs), ("lora", n_pairs), ("filler", 30)):
        for k in range(count):
            path = out / "images" / kind / f"{k:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            colour = rng.integers(0, 256, 3)
            pixels = np.clip(colour + rng.normal(0, 40, (96, 96, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path)
            image = {"image_id": f"{kind}/{k:03d}", "path": path}
            if kind != "filler":
                image.update(condition=kind, pair=f"{k:03d}")
            images.append(image)
    study = make_study(out / "study.yaml", name="demo", images=images,
                       timing={"image_ms": 600, "gap_ms": 800},
                       sequence={"length": 50, "targets": 10, "target_lag": [10, 20],
                                 "vigilance": 5, "vigilance_lag": [1, 4]})
    base_m = rng.beta(6, 4, n_pairs)
    truth = {f"base/{k:03d}": float(m) for k, m in enumerate(base_m)}
    truth |= {f"lora/{k:03d}": float(min(0.98, m + 0.1)) for k, m in enumerate(base_m)}
    _write_truth(out / "true_memorability.csv", truth)
    records = _simulate_locally(study, f"sqlite:///{out / 'demo.db'}", truth, args.participants,
                                Behaviour(), min(args.participants, 20), args.seed)
    engine = db.connect(f"sqlite:///{out / 'demo.db'}")
    record = _export(study, db.responses_frame(engine, study), str(out / "human.parquet"),
                     seed=args.seed)
    scores, _ = read_scores(str(out / "human.parquet"))
    estimated = scores.set_index("image_id")["memorability_human"]
    rho = stats.spearmanr([truth[i] for i in estimated.index], estimated.to_numpy()).statistic
    trials = compare.hit_trials(db.responses_frame(engine, study))
    result = compare.compare_conditions(trials, base="base", engineered="lora", seed=args.seed,
                                        n_permutations=2000)
    compare.write_comparison_report(result, str(out / "comparison"),
                                    sources={i.image_id: str(i.path) for i in study.images})
    summary = result.to_dict()
    print(f"game demo: {len(records)} simulated participants, {sum(r['trials'] for r in records)} "
          f"responses stored in {out / 'demo.db'}\n"
          f"human memorability of {len(scores)} images: Spearman {rho:.2f} with the simulated "
          f"truth; split-half {record['split_half']['rho']:.2f} (Spearman-Brown "
          f"{record['split_half']['rho_corrected']:.2f})\n"
          f"lora vs base: mean hit-rate difference {summary['mean_difference']:+.3f} (simulated "
          f"+0.10), permutation p {summary['permutation']['p_value']:.3g}\n"
          f"wrote {out / 'human.parquet'}, {out / 'comparison' / 'report.html'}")
    return 0
