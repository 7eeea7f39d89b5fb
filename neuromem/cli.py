"""The ``neuromem`` command line: one sub-command per module, imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from neuromem.errors import find_user_error

# command name -> module defining ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS: dict[str, str] = {
    "rois": "neuromem.commands.rois",
    "predict": "neuromem.commands.predict",
    "demo": "neuromem.commands.demo",
    "game": "neuromem.commands.game",
    "score": "pipelines.score",
    "fit-probes": "pipelines.fit_probes",
    "label-categories": "pipelines.label_categories",
    "assess": "pipelines.assess",
    "decompose": "pipelines.decompose",
    "guide": "pipelines.guide",
    "enhance": "pipelines.enhance",
    "cross-eval": "pipelines.cross_eval",
    "tune-guidance": "pipelines.tune_guidance",
    "finetune": "pipelines.finetune_draft",
    "evaluate-lora": "pipelines.evaluate_lora",
    "layers": "pipelines.layer_scan",
    "train-memnet": "pipelines.train_memnet",
    "decode": "pipelines.decode",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help, unless the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False
                or default is argparse.SUPPRESS
                or action.option_strings == [] or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: %(default)s)"


def _first_line(module_name: str) -> str:
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return ""
    import ast

    with open(spec.origin, encoding="utf-8") as fh:
        doc = ast.get_docstring(ast.parse(fh.read())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _run(module, args: argparse.Namespace) -> int:
    """Run a command; a user error is one line on stderr and exit status 2.

    Errors raised inside Ray workers are unwrapped to the neuromem error behind them
    (``--debug`` prints the whole traceback instead). Ctrl-C exits with status 130.
    """
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("neuromem: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is None or getattr(args, "debug", False):
            raise
        # neuromem's messages are one line; Ray appends its own lines to errors it carries
        lines = str(user_error).strip().splitlines()
        print(f"neuromem: error: {lines[0] if lines else type(user_error).__name__}",
              file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``neuromem`` command."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return _run(importlib.import_module(args._module), args)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The top-level parser, loading only the arguments of the command named in ``argv``."""
    from neuromem import __version__

    parser = argparse.ArgumentParser(
        prog="neuromem",
        description="neuromem: why images are memorable, read off a model of visual cortex.",
    )
    parser.add_argument("--version", action="version", version=f"neuromem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, module_name in COMMANDS.items():
        help_text = _first_line(module_name)
        cmd = sub.add_parser(name, help=help_text, description=help_text,
                             formatter_class=HelpFormatter)
        _add_common_arguments(cmd)
        cmd.set_defaults(_module=module_name)
        if name == wanted:
            importlib.import_module(module_name).add_arguments(cmd)
    return parser


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of its one-line message")


def run_module(module_name: str, argv: list[str] | None = None) -> int:
    """Run one command module as a script (``python -m pipelines.score ...``)."""
    module = importlib.import_module(module_name)
    if module_name == "__main__" and getattr(module, "__spec__", None) is not None:
        module_name = module.__spec__.name  # run as `python -m pipelines.X`
    parser = argparse.ArgumentParser(prog=f"python -m {module_name}", description=module.__doc__,
                                     formatter_class=HelpFormatter)
    _add_common_arguments(parser)
    module.add_arguments(parser)
    return _run(module, parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
