"""The README is executable: every Python snippet runs and prints what it says, every
example runs with light settings, and every shell command quoted with its output is
checked against what the command prints now."""
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _run(args, cwd, timeout=600):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_every_example_is_covered():
    # each script in examples/ runs in the default suite at a reduced size: cannon_network
    # and ode_make_data below, convergence in test_newton.py; a new one needs a test
    scripts = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert scripts <= {"cannon_network.py", "ode_make_data.py", "convergence.py"}, \
        f"new example script(s) {scripts} need a reduced-size run in the tests"


@pytest.mark.parametrize("i", range(len(SNIPPETS)))
def test_readme_python_snippet_runs_and_prints(i, tmp_path):
    # Each snippet is a complete program; an "# prints: TEXT" comment names what it must print.
    code = SNIPPETS[i]
    path = tmp_path / f"snippet{i}.py"        # Taichi compiles functions from source files only
    path.write_text(code)
    r = _run([sys.executable, str(path)], cwd=tmp_path)
    assert r.returncode == 0, f"snippet {i} failed:\n{code}\n{r.stderr[-3000:]}"
    assert r.stdout.strip(), f"snippet {i} prints nothing"
    for want in re.findall(r"# prints: (.+)", code):
        assert want.strip() in r.stdout, f"snippet {i}: expected {want!r} in\n{r.stdout}"
    assert "Traceback" not in r.stderr


def _numbers(line):
    return [float(v) for v in re.findall(r"[-+]?\d+\.?\d*(?:e[-+]?\d+)?", line)]


def test_cannon_network_example_runs_with_few_iterations(tmp_path):
    # the whole script (training through the torch layer, refinement, plot) at a reduced
    # size; the README's numbers need the full 300 iterations: the slow test below
    r = _run([sys.executable, str(ROOT / "examples" / "cannon_network.py"), "--iterations", "5",
              "--held-out", "2", "--out", str(tmp_path)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trained 5 iterations" in r.stdout, r.stdout
    line = next(l for l in r.stdout.splitlines() if l.startswith("held-out mean miss"))
    untrained, trained, refined = _numbers(line)
    assert trained < untrained and refined < 1e-2, line
    assert (tmp_path / "miss.png").stat().st_size > 1000


@pytest.mark.slow    # ~30 s; the reduced run above and test_aim_network.py cover the same paths
def test_cannon_network_example_prints_the_readme_numbers(tmp_path):
    # README: "It prints the mean held-out miss: 38.3 m untrained, 1.79 m trained, 2.42e-04 m refined."
    claim = re.search(r"held-out miss: ([^\n]+ refined)", README).group(1)
    r = _run([sys.executable, str(ROOT / "examples" / "cannon_network.py"), "--out", str(tmp_path)],
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(l for l in r.stdout.splitlines() if l.startswith("held-out mean miss"))
    got, want = _numbers(line), _numbers(claim)
    assert len(got) == len(want) == 3, (line, claim)
    # untrained and trained to the 3 digits shown; the refined miss (an L-BFGS end point
    # below a millimetre) to its order of magnitude
    assert abs(got[0] - want[0]) < 0.05 and abs(got[1] - want[1]) < 0.005, (line, claim)
    assert want[2] / 3 < got[2] < want[2] * 3, (line, claim)
    assert (tmp_path / "miss.png").stat().st_size > 1000


def test_ode_data_example_reproduces_the_shipped_data(tmp_path):
    import numpy as np
    out = tmp_path / "lv.csv"
    r = _run([sys.executable, str(ROOT / "examples" / "ode_make_data.py"), "--out", str(out)],
             cwd=tmp_path)
    assert r.returncode == 0 and f"wrote {out}" in r.stdout, r.stderr[-3000:]
    shipped = np.loadtxt(ROOT / "diffsim" / "scenes" / "data" / "lotka_volterra_noisy.csv",
                         delimiter=",", skiprows=1)
    np.testing.assert_allclose(np.loadtxt(out, delimiter=",", skiprows=1), shipped, atol=1e-9)


def test_demo_prints_the_readme_numbers(tmp_path):
    # README: "in 28 iterations: angle 0.3981294491 rad, miss 0.42 mm, model error ≈ 2e-11 m"
    import json
    r = _run([sys.executable, "-m", "diffsim", "optimize", "cannon", "--json", "--out",
              str(tmp_path)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(r.stdout)
    assert "in 28 iterations" in README and d["iterations"] == 28
    assert "angle 0.3981294491 rad" in README and f"{d['params']['angle']:.10f}" == "0.3981294491"
    assert "miss 0.42 mm" in README and f"{d['miss'][0] * 1e3:.2f}" == "0.42"
    assert "model error ≈ 2e-11 m" in README and f"{d['model_error'][0]:.0e}" == "2e-11"
    for name in ("trajectories.png", "loss.png", "landscape.png", "best_params.json"):
        assert (tmp_path / name).stat().st_size > 100
