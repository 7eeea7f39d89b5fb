"""The layering rule, read off the import statements of every module (AST, no import executed).

- Nothing imports a pipeline: not the library, not another pipeline, not a test or a benchmark.
- Ray is imported inside the library only by ``neuromem/jobs/`` (pipelines may import it).
- ``neuromem/runtime/`` (storage, config, device ...) depends on no other neuromem package but
  ``neuromem.errors``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    p for folder in ("neuromem", "pipelines", "tests", "benchmarks")
    for p in (REPO / folder).rglob("*.py")
)


def imported_modules(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in a file (relative imports resolved in ``package``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    if package is None:
        package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module]) if module else ".".join(base)
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def violations(rule) -> list[str]:
    out = []
    for path in SOURCES:
        relative = path.relative_to(REPO).as_posix()
        for line, module in imported_modules(path):
            reason = rule(relative, module)
            if reason:
                out.append(f"{relative}:{line} imports {module}: {reason}")
    return out


def _no_pipeline_imports(relative: str, module: str) -> str | None:
    if module == "pipelines" or module.startswith("pipelines."):
        return "nothing may import a pipeline (move the code into neuromem/)"
    return None


def _ray_only_in_jobs(relative: str, module: str) -> str | None:
    if not relative.startswith("neuromem/") or relative.startswith("neuromem/jobs/"):
        return None
    if module == "ray" or module.startswith("ray."):
        return "Ray code in the library belongs in neuromem/jobs/"
    return None


def _runtime_stands_alone(relative: str, module: str) -> str | None:
    if not relative.startswith("neuromem/runtime/") or not module.startswith("neuromem"):
        return None
    if module in ("neuromem", "neuromem.errors") or module.startswith(("neuromem.runtime",
                                                                      "neuromem.errors.")):
        return None
    return "neuromem/runtime/ must not depend on the rest of neuromem"


@pytest.mark.parametrize("rule", [_no_pipeline_imports, _ray_only_in_jobs, _runtime_stands_alone],
                         ids=lambda rule: rule.__name__.strip("_"))
def test_layering_rule(rule):
    assert violations(rule) == []


def test_the_walker_sees_every_import_form(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("import pipelines.score\nfrom pipelines import guide\n"
                      "from ..jobs import session\ndef f():\n    from ray import data\n")
    modules = [m for _, m in imported_modules(source, package="neuromem.scoring")]
    assert {"pipelines.score", "pipelines.guide", "neuromem.jobs.session", "ray.data"} <= set(modules)
    assert _no_pipeline_imports("tests/x.py", "pipelines.guide")
    assert _ray_only_in_jobs("neuromem/scoring/x.py", "ray.data")
    assert not _ray_only_in_jobs("neuromem/jobs/x.py", "ray.data")
