"""Test set-up: one Taichi runtime (cpu, float64) for the whole session (taichi-notes 5)."""
import os

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("TI_LOG_LEVEL", "warn")


@pytest.fixture(scope="session", autouse=True)
def runtime():
    import diffsim
    return diffsim.init(arch="cpu", precision="f64")


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(tmp_path, monkeypatch):
    """Every test runs in its own empty working directory, so a verb's default output
    folder (diffsim-out/<scene>) never lands in the checkout."""
    monkeypatch.chdir(tmp_path)
