"""Typed job configs: from the command line, from YAML, checked, recorded."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from neuromem.errors import InputError
from neuromem.runtime.config import JobConfig


@dataclass(frozen=True)
class Example(JobConfig):
    table: str
    steps: int = 10
    mode: str = "fast"

    def check(self) -> None:
        self.require_at_least(1, "steps")
        self.require_choice("mode", ("fast", "slow"))


def test_from_args_reads_fields_of_the_same_name_and_checks():
    args = argparse.Namespace(table="t", steps=3, verbose=True, debug=False)
    assert Example.from_args(args) == Example("t", 3, "fast")
    with pytest.raises(InputError, match="--steps must be at least 1"):
        Example.from_args(argparse.Namespace(table="t", steps=0))


def test_from_yaml_refuses_unknown_and_missing_settings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("table: t\nmode: slow\n")
    assert Example.from_yaml(path, steps=5) == Example("t", 5, "slow")
    path.write_text("table: t\nstep: 5\n")
    with pytest.raises(InputError, match="unknown setting.*step"):
        Example.from_yaml(path)
    path.write_text("steps: 5\n")
    with pytest.raises(InputError, match="missing required setting.*table"):
        Example.from_yaml(path)
    path.write_text("table: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        Example.from_yaml(path)
    path.write_text("table: t\nmode: medium\n")
    with pytest.raises(InputError, match="--mode must be one of fast, slow"):
        Example.from_yaml(path)


def test_to_dict_and_replace():
    config = Example("t")
    assert config.to_dict() == {"table": "t", "steps": 10, "mode": "fast"}
    assert config.replace(steps=2).steps == 2
    with pytest.raises(InputError):
        config.replace(steps=-1)


@pytest.mark.parametrize("command", ["fit-probes", "tune-guidance", "guide", "enhance",
                                     "cross-eval"])
def test_local_only_outputs_refuse_a_uri_in_one_line(command, capsys):
    """A URI --out of a command that writes only locally would land in a folder named 's3:'."""
    from neuromem.cli import build_parser
    from neuromem.jobs.fit_probes import FitProbesConfig
    from neuromem.jobs.guide import CrossEvalConfig, EnhanceConfig, GuideConfig
    from neuromem.jobs.tune_guidance import TuneGuidanceConfig

    configs = {"fit-probes": FitProbesConfig, "tune-guidance": TuneGuidanceConfig,
               "guide": GuideConfig, "enhance": EnhanceConfig, "cross-eval": CrossEvalConfig}
    args = build_parser([command]).parse_args(
        [command, *_required(command), "--out", "s3://bucket/run"])
    with pytest.raises(InputError, match="--out must be a local folder here, got s3://bucket/run"):
        configs[command].from_args(args)


def _required(command: str) -> list[str]:
    """Smallest valid arguments of each command besides --out."""
    return {
        "fit-probes": ["table.parquet", "--model", "tiny"],
        "tune-guidance": ["--config", "search.yaml"],
        "guide": ["--model", "tiny", "--prompt", "x", "--target", "PPA:+1", "--encoder",
                  "clip-probe:tiny", "--scale", "1"],
        "enhance": ["image.png", "--model", "tiny", "--target", "PPA:+1", "--encoder",
                    "clip-probe:tiny", "--scale", "1"],
        "cross-eval": ["--model", "tiny", "--prompt", "x", "--guide-encoder", "clip-probe:tiny",
                       "--eval-encoder", "tribev2:tiny", "--scale", "1"],
    }[command]
