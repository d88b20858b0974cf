from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli(runner):
    """Invoke the CLI in-process; returns the click Result."""
    from augforge.cli import app

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A prepared 32-px synthetic dataset shared by the stage tests (read-only)."""
    from augforge.configs import SynthesizeConfig
    from augforge.stages.prepare import run_synthesize

    out = tmp_path_factory.mktemp("syn") / "data"
    run_synthesize(SynthesizeConfig(str(out), n=60, size=32, seed=0))
    return out
