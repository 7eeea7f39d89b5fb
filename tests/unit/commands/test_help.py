"""Every command's options: help text on each, defaults shown, one name per concept."""

from __future__ import annotations

import argparse
import re

import pytest

from neuromem import cli

#: Names that were replaced by one vocabulary across commands (old → the name to use).
RETIRED = {"--roi-set": "--rois", "--guidance-scale": "--cfg-scale", "--save": "--out"}


def parser_of(command: str) -> argparse.ArgumentParser:
    parser = cli.build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_option_has_help_and_no_retired_name(command):
    parser = parser_of(command)
    help_text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        for name in action.option_strings:
            assert name not in RETIRED, f"{command} {name}: use {RETIRED[name]}"
    assert not re.search(r"\bissue\s*#?\d+|seed 00\d|DEVELOPERS\.md", help_text), command


def test_defaults_are_shown_once():
    text = " ".join(parser_of("score").format_help().split())
    assert "--batch-size BATCH_SIZE images per model call (default: 64)" in text
    assert text.count("(default: 1024)") == 1  # --rows-per-part, not repeated
    assert "--overwrite" in text and "--retry-errors" in text
