"""``neuromem game make|simulate|export|compare|demo`` end to end, offline (SQLite, a server in
this process on 127.0.0.1)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from PIL import Image

from neuromem.cli import main
from neuromem.game.export import read_scores
from neuromem.game.study import load_study


def _folder(root, name, n, rng):
    for k in range(n):
        path = root / name / f"p{k:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return root / name


def test_make_simulate_export_compare(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base, lora = _folder(tmp_path, "base", 12, rng), _folder(tmp_path, "lora", 12, rng)
    fillers = _folder(tmp_path, "fillers", 24, rng)
    study_file = tmp_path / "study" / "study.yaml"
    assert main(["game", "make", str(study_file), "--condition", f"base={base}",
                 "--condition", f"lora={lora}", "--fillers", str(fillers), "--length", "40",
                 "--targets", "8", "--target-lag", "8", "12", "--vigilance", "4",
                 "--vigilance-lag", "1", "3", "--image-ms", "500"]) == 0
    study = load_study(study_file)
    assert len(study.target_ids) == 24 and len(study.filler_ids) == 24
    assert study.timing.image_ms == 500 and study.sequence.target_lag == (8, 12)
    # files of the same name in the two conditions are a pair
    pairs = {i.image_id: i.pair for i in study.images if i.condition}
    assert pairs["base/p03"] == pairs["lora/p03"] == "p03"

    db = f"sqlite:///{tmp_path / 'sim.db'}"
    assert main(["game", "simulate", str(study_file), "--db", db, "--participants", "30",
                 "--noise", "0", "--seed", "1"]) == 0
    truth_file = study_file.parent / "true_memorability.csv"
    assert f"wrote {truth_file}" in capsys.readouterr().out
    truth = pd.read_csv(truth_file).set_index("image_id")["memorability"]
    assert sorted(truth.index) == sorted(study.target_ids)

    out = tmp_path / "human.parquet"
    assert main(["game", "export", str(study_file), "--db", db, "--out", str(out)]) == 0
    scores, record = read_scores(str(out))
    assert sorted(scores["image_id"]) == sorted(study.target_ids)
    assert record["n_participants"] == 30 and record["flagged"] == []
    assert scores["n_participants"].sum() == 30 * 8  # every target repeat scored once

    report = tmp_path / "comparison"
    assert main(["game", "compare", str(study_file), "--db", db, "--out", str(report),
                 "--permutations", "200"]) == 0
    result = json.loads((report / "comparison.json").read_text())
    assert result["base"] == "base" and result["engineered"] == "lora"
    assert {"report.html", "pairs.png", "pairs.parquet"} <= {p.name for p in report.iterdir()}

    # a second simulation with the same seed would reuse participant ids: refused in one line
    assert main(["game", "simulate", str(study_file), "--db", db, "--participants", "2",
                 "--seed", "1"]) == 2
    assert "already has a session" in capsys.readouterr().err
    # a negative session rate is refused before the server starts
    assert main(["game", "serve", str(study_file), "--db", db,
                 "--sessions-per-minute", "-1"]) == 2
    assert "--sessions-per-minute must be 0" in capsys.readouterr().err


def test_make_refuses_bad_folders_in_one_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base = _folder(tmp_path, "base", 4, rng)
    (tmp_path / "empty").mkdir()
    for argv, message in (
            (["--condition", str(base)], "NAME=FOLDER"),
            (["--condition", f"base={tmp_path / 'missing'}"], "is not a folder"),
            (["--condition", f"base={tmp_path / 'empty'}"], "holds no"),
            (["--condition", f"base={base}"], "only 4 can be drawn")):  # default: 22 targets
        assert main(["game", "make", str(tmp_path / "s.yaml"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_plan_prints_power(capsys):
    assert main(["game", "simulate", "--plan", "--effect", "0.15", "--participants", "40",
                 "--pairs", "20", "--simulations", "40"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("power ") and "40 participants and 20 pairs" in line
    assert main(["game", "simulate"]) == 2


def test_demo_runs_a_study_end_to_end(tmp_path, capsys):
    participants = 24
    out = tmp_path / "demo"
    assert main(["game", "demo", "--out", str(out), "--participants", str(participants)]) == 0
    printed = capsys.readouterr().out
    assert f"{participants} simulated participants" in printed
    scores, _ = read_scores(str(out / "human.parquet"))
    truth = pd.read_csv(out / "true_memorability.csv").set_index("image_id")["memorability"]
    assert sorted(scores["image_id"]) == sorted(truth.index)
    assert (out / "comparison" / "report.html").is_file()
