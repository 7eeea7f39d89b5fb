"""The Ray session helper's stderr filter and the CLI's one-line errors (no Ray started)."""

from __future__ import annotations

import os
import sys

import pytest
from ray.exceptions import RayTaskError

from neuromem import cli
from neuromem.errors import InputError, find_user_error
from neuromem.jobs.session import NOISE_LINES, _init_kwargs, _stderr_without


def test_native_noise_is_dropped_and_everything_else_kept(capfd):
    with _stderr_without(NOISE_LINES):
        os.write(2, b"kept: a real error\n")
        os.write(2, f"[E core_worker.cc] Actor x {NOISE_LINES[0]}. See ...\n".encode())
        print("python's stderr still works", file=sys.stderr)
    # the filter forwards from a thread: wait until it has passed the first line on
    err = capfd.readouterr().err
    assert "kept: a real error" in err and "python's stderr still works" in err
    assert NOISE_LINES[0] not in err


def test_a_users_error_is_found_behind_rays_wrappers():
    original = InputError("'x.safetensors' is not a safetensors file\nRay's appended retry note")
    wrapped = RayTaskError("MapWorker.submit", "remote traceback text", original)
    assert find_user_error(wrapped) is original
    assert find_user_error(wrapped.as_instanceof_cause()) is original
    try:
        try:
            raise original
        except InputError as error:
            raise RuntimeError("bug while handling") from error
    except RuntimeError as chained:
        assert find_user_error(chained) is original
    assert find_user_error(ValueError("a bug")) is None


class _Command:
    def __init__(self, error):
        self.error = error

    def run(self, args):
        raise self.error


def test_the_cli_prints_one_line_or_the_traceback_with_debug(capsys):
    import argparse

    wrapped = RayTaskError("f", "tb", InputError("bad probe\nretry note")).as_instanceof_cause()
    assert cli._run(_Command(wrapped), argparse.Namespace(debug=False)) == 2
    assert capsys.readouterr().err == "neuromem: error: bad probe\n"
    with pytest.raises(InputError):
        cli._run(_Command(wrapped), argparse.Namespace(debug=True))
    with pytest.raises(ValueError):  # a bug keeps its traceback
        cli._run(_Command(ValueError("bug")), argparse.Namespace(debug=False))
    assert cli._run(_Command(KeyboardInterrupt()), argparse.Namespace()) == 130


def test_embedded_ray_has_no_dashboard_and_a_cluster_gets_the_checkout(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    local = _init_kwargs(None, dashboard=False, num_cpus=None)
    assert local["address"] == "local" and local["include_dashboard"] is False
    remote = _init_kwargs("10.0.0.1:6379", dashboard=False, num_cpus=None)
    assert remote["address"] == "10.0.0.1:6379"
    assert remote["runtime_env"]["working_dir"] == os.path.dirname(os.path.dirname(cli.__file__))
    assert ".venv" in remote["runtime_env"]["excludes"]
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a user's shell: joins and uploads
    assert "runtime_env" in _init_kwargs(None, dashboard=False, num_cpus=None)
    # inside `ray job submit` the job supervisor gives the driver its runtime env: no upload
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {}}')
    assert "runtime_env" not in _init_kwargs(None, dashboard=False, num_cpus=None)
