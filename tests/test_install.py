"""A real install: scenes and data ship inside the package, and importing diffsim leaves
the interpreter's global state (warnings filters, matplotlib backend) alone."""
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_import_installs_no_warning_filter_and_keeps_the_matplotlib_backend():
    # the dependencies install filters of their own (taichi, numpy, scipy): import them
    # first, so only what diffsim itself does is compared
    code = ("import taichi, numpy, scipy.optimize, scipy.integrate, scipy.linalg, tqdm, "
            "matplotlib.pyplot, warnings, matplotlib; matplotlib.use('svg'); "
            "before = list(warnings.filters); "
            "import diffsim, diffsim.ode, diffsim.plots.cannon, diffsim.cli, diffsim.tasks.ode, "
            "diffsim.tasks.mass_spring, diffsim.tasks.cannon; "
            "assert list(warnings.filters) == before, 'warnings filter changed'; "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend(); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert "[Taichi]" not in r.stdout + r.stderr          # no banner


def test_a_non_editable_install_runs_bundled_scenes_from_any_directory(tmp_path):
    import shutil
    # build from a copy: setuptools writes build/ and egg-info next to the sources
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "diffsim-out", "__pycache__", ".pytest_cache"))
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-build-isolation", "--target", str(target), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, "-c", "import diffsim, json; print(diffsim.__file__)"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and str(target) in r.stdout, (r.stdout, r.stderr)
    r = subprocess.run([sys.executable, "-m", "diffsim", "scenes", "--json"], cwd=elsewhere,
                       env=env, capture_output=True, text=True, timeout=120)
    names = {s["name"] for s in json.loads(r.stdout)}
    assert {"cannon", "robot_a", "lotka_volterra"} <= names
    data = target / "diffsim" / "scenes" / "data" / "lotka_volterra_noisy.csv"
    assert data.is_file()
    r = subprocess.run([sys.executable, "-m", "diffsim", "grad", "cannon", "--json"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "objective" in json.loads(r.stdout)
