"""Every script in benchmarks/ runs to the end with its lightest options and prints its
table. No timing assertions: performance is read from the tables, not tested here.
compare.py also checks that JAX and Warp compute the same losses and gradients as
diffsim (it exits 1 and prints WARNING when they differ), and that missing peers are
reported as "not installed" instead of crashing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run(script, *args, env_extra=None, timeout=240):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*(env_extra or []), str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("TI_LOG_LEVEL", "warn")
    out = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{script} {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr[-3000:]}"
    return out.stdout


def test_every_benchmark_script_is_covered():
    scripts = {p.name for p in BENCH.glob("*.py")}
    assert scripts <= {"projectile.py", "mass_spring.py", "ode.py", "compare.py", "sweep.py"}, \
        f"new benchmark script(s) {scripts} need a smoke test here"


def test_projectile_benchmark_runs():
    out = run("projectile.py", "--batches", "1", "--repeats", "1", "--no-baseline")
    assert "fwd+bwd ms" in out and "grad/fwd" in out
    rows = [ln for ln in out.splitlines() if ln.split() and ln.split()[0] == "1"]
    assert len(rows) == 1, out


def test_mass_spring_benchmark_runs():
    out = run("mass_spring.py", "--robots", "A", "--precision", "f64", "--repeat", "1",
              "--no-baseline", "--no-cloth")
    assert "diffsim ms/iter" in out
    assert "failed" not in out, out
    assert any(ln.startswith("A ") for ln in out.splitlines()), out


def test_ode_benchmark_runs():
    out = run("ode.py", "--quick", "--repeats", "1")
    for head in ("1. Lotka–Volterra", "2. Gradient time", "3. Gradient time", "4. Peak"):
        assert head in out, out


def test_sweep_benchmark_runs():
    pytest.importorskip("distributed")
    out = run("sweep.py", "--points", "8", "--workers", "0", "1")
    assert "pts/s warm" in out and "1 worker " in out, out


def test_compare_benchmark_runs_and_peers_agree():
    out = run("compare.py", "--quick")
    assert out.count("grad rel.diff") == 3, out      # cannon B = 1, 64 and the cloth
    assert "WARNING" not in out, out
    pytest.importorskip("jax")
    pytest.importorskip("warp")
    for tool in ("jax", "warp"):
        rows = [ln.split() for ln in out.splitlines() if ln.startswith(tool + " ")]
        assert len(rows) == 3, out
        for r in rows:   # last two columns: loss and gradient relative differences
            assert float(r[-2]) < 1e-8 and float(r[-1]) < 1e-8, out


def test_compare_without_peers_says_not_installed(tmp_path):
    # shadow packages that refuse to import, as if jax and warp were not installed
    for name in ("jax", "warp"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(
            f"raise ImportError('{name} hidden by the test', name='{name}')\n")
    out = run("compare.py", "--quick", "--only", "cannon", env_extra=[str(tmp_path)])
    rows = [ln for ln in out.splitlines() if ln.startswith(("jax ", "warp "))]
    assert len(rows) == 4 and all("not installed" in ln for ln in rows), out
    assert "n/a (peer missing)" in out
