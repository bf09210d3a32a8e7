"""Backends: Taichi (default) and Quadrants. Choosing one, refusing a switch or an unknown
name, the CLI flag, the paths Quadrants refuses, and the gradient tests (marker
``gradient``, tests/conftest.py) run again on Quadrants in a subprocess."""
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import diffsim
from diffsim import backend
from diffsim.errors import DiffsimError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def test_unknown_backend_names_are_refused(monkeypatch):
    with pytest.raises(DiffsimError, match="backend='jax' is not known"):
        diffsim.init(backend="jax")
    monkeypatch.setenv("DIFFSIM_BACKEND", "warp")
    with pytest.raises(DiffsimError, match="DIFFSIM_BACKEND='warp'"):
        backend.requested()


def test_switching_backend_after_init_is_refused(runtime):
    other = "quadrants" if runtime.backend == "taichi" else "taichi"
    assert diffsim.init(backend=runtime.backend) is runtime      # same one: a no-op
    with pytest.raises(DiffsimError, match=f"cannot switch to {other}"):
        diffsim.init(backend=other)


def test_import_chooses_nothing_and_env_picks_the_backend():
    code = ("import sys, diffsim; assert 'taichi' not in sys.modules and "
            "'quadrants' not in sys.modules; print(diffsim.init().backend)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=_env(DIFFSIM_BACKEND="quadrants"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "quadrants"


def test_a_function_of_the_other_backend_is_refused_by_name(runtime):
    from diffsim.ode import ODE
    other = "quadrants" if runtime.backend == "taichi" else "taichi"

    def rhs(t, y, p):
        return y
    setattr(rhs, f"_is_{other}_function", True)     # what @other.func leaves on it
    with pytest.raises(DiffsimError, match=f"rhs function .*rhs of ODE 'mine' is a {other} "
                                           f"function.*diffsim.backend import ti"):
        ODE(rhs, 1, 1, name="mine").check()


def test_cli_backend_flag_gives_the_same_gradient_on_both():
    res = {}
    for name in ("taichi", "quadrants"):
        out = subprocess.run([sys.executable, "-m", "diffsim", "grad", "cannon", "--json",
                              "--backend", name], capture_output=True, text=True,
                             timeout=300, env=_env())
        assert out.returncode == 0, out.stderr[-2000:]
        res[name] = json.loads(out.stdout)           # stdout is clean JSON: no banner
    t, q = res["taichi"], res["quadrants"]
    assert q["objective"] == pytest.approx(t["objective"], rel=1e-12)
    assert q["grad"]["angle"] == pytest.approx(t["grad"]["angle"], rel=1e-9)


def test_refused_paths(runtime):
    """Quadrants 1.3.3 gets these gradients wrong (taichi-notes 33): diffsim refuses them
    there with a message naming the backend; on Taichi they run. The cannon's bounce is
    differentiated by the hand-written adjoint on both (FD-checked); only Quadrants' own
    autodiff through it is refused."""
    from diffsim.ode import Euler, solve
    from diffsim.ode.systems import SYSTEMS
    from diffsim.systems.projectile import Projectile
    sim = Projectile(1, steps=300, dt=0.01, bounces=1, integrator="semi_implicit_euler")
    sim.set_inputs(speed=12.0, angle=0.4, restitution=0.5)
    sim.forward("range")
    assert sim.outputs()["bounces"][0] == 1
    kw = dict(solver=Euler(), dt=0.01, gradient="discrete")
    lv = SYSTEMS["lotka_volterra"]
    flat = Projectile(1, steps=300, dt=0.01)          # no bounce: forward mode's own limit
    flat.set_inputs(speed=12.0, angle=0.4)
    from diffsim.systems import projectile_reverse
    # through the bounce: the hand-written adjoint on either backend, against central
    # differences of the range (d range / d speed: ~1.6 s per m/s)
    g = sim.backward()["speed"][0]

    def rng(v):
        sim.set_inputs(speed=v)
        return sim.forward("range")
    fd = (rng(12.0 + 1e-6) - rng(12.0 - 1e-6)) / 2e-6
    assert g == pytest.approx(fd, rel=1e-6, abs=1e-9)
    rng(12.0)                # the forward pass at the point again
    projectile_reverse.use(sim, False)
    if runtime.backend == "quadrants":
        with pytest.raises(DiffsimError, match="bounce.*quadrants backend"):
            sim.backward()    # Quadrants' own autodiff through the bounce: refused
        with pytest.raises(DiffsimError, match="quadrants backend"):
            solve(lv, (0, 0.2), [1, 1], [1.5, 1, 3, 1], **kw)
        with pytest.raises(DiffsimError, match="forward mode.*quadrants backend"):
            flat.forward_tangent(["angle"], "range")
    else:
        assert np.isfinite(sim.backward()["angle"][0])
        assert np.isfinite(flat.forward_tangent(["angle"], "range")[1]["angle"][0])
        assert np.isfinite(solve(lv, (0, 0.2), [1, 1], [1.5, 1, 3, 1], **kw).grad_params).all()


def test_gradient_tests_pass_on_quadrants():
    """Every test marked ``gradient`` (tests/conftest.py) passes on Quadrants: run in a
    subprocess, as a process holds one backend. Nothing may be skipped."""
    if os.environ.get("DIFFSIM_BACKEND") == "quadrants":
        pytest.fail("run this from a Taichi session; it starts the Quadrants one itself")
    files = sorted({e.split("::")[0] for e in __import__("conftest").GRADIENT_TESTS})
    # -n 0: in-process (pyproject's addopts would start workers inside this xdist worker)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gradient", "-p",
                          "no:cacheprovider", "-n", "0", *files], cwd=ROOT / "tests", capture_output=True,
                         text=True, timeout=900, env=_env(DIFFSIM_BACKEND="quadrants"))
    tail = out.stdout[-3000:] + out.stderr[-1000:]
    assert out.returncode == 0, tail
    summary = out.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 20 and not re.search(r"skipped|xfail|error", summary), summary
