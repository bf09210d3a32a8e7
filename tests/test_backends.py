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


def test_paths_once_refused_on_quadrants_are_right_on_both(runtime):
    """Quadrants 1.3.3 differentiates a vector built from a loop's carried scalars wrongly
    (taichi-notes 33); diffsim's kernels now avoid the pattern, so on both backends: an
    explicit ODE solver's gradient equals central differences, Quadrants' (or Taichi's)
    own autodiff through a cannon's bounce and the cannon's forward mode equal the
    hand-written adjoint. An rhs that computes with a vector of y's components, which
    Quadrants' reverse mode through the fused time loop gets wrong (11 % here), is right
    on both too: on Quadrants the discrete gradient of explicit solvers is the reverse
    recursion over one step's Jacobians (no dynamic loop around them)."""
    from diffsim.backend import ti
    from diffsim.ode import ODE, Euler, solve
    from diffsim.ode.systems import SYSTEMS
    from diffsim.systems import projectile_reverse
    from diffsim.systems.projectile import Projectile
    kw = dict(solver=Euler(), dt=0.01, saveat=[0.2], data=[[0.5, 0.5]])
    lv = SYSTEMS["lotka_volterra"]
    d = solve(lv, (0, 0.2), [1, 1], [1.5, 1, 3, 1], gradient="discrete", **kw)
    f = solve(lv, (0, 0.2), [1, 1], [1.5, 1, 3, 1], gradient="fd", **kw)
    np.testing.assert_allclose(d.grad_params, f.grad_params, rtol=1e-6)
    assert np.abs(f.grad_params).max() > 0.01

    sim = Projectile(3, steps=300, dt=0.01, bounces=1, dims=3, integrator="rk4")
    sim.set_inputs(speed=[12.0, 9.0, 14.0], angle=0.4, restitution=[0.5, 0.3, 0.0],
                   drag=0.01, wind_z=1.0)
    sim.forward("range")
    assert sim.outputs()["bounces"].tolist() == [1, 1, 0]
    hand = sim.backward()
    projectile_reverse.use(sim, False)
    try:
        sim.forward("range")
        ad = sim.backward()       # the backend's own reverse mode through the bounce
    finally:
        projectile_reverse.use(sim, True)
    _, fwd = sim.forward_tangent(["speed", "angle", "restitution", "wind_z"], "range")
    for n in ("speed", "angle", "restitution", "wind_z"):
        np.testing.assert_allclose(ad[n], hand[n], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(fwd[n], hand[n], rtol=1e-10, atol=1e-12)

    @ti.func
    def vector_rhs(t, y, p):        # A @ (a vector of y's components)
        return ti.Matrix([[0.0, 1.0], [-p[0], 0.0]]) @ ti.Vector([y[0], y[1]])
    ode = ODE(vector_rhs, 2, 1, name="vector_rhs")
    kw = dict(solver=Euler(), dt=0.01, saveat=[0.5, 1.0], data=[[0.1, 0.2], [0.3, 0.1]])
    f = solve(ode, (0, 1), [1.0, 0.5], [0.7], gradient="fd", **kw)
    assert abs(f.grad_params[0, 0]) > 0.1
    for method in ("discrete", "forward"):
        d = solve(ode, (0, 1), [1.0, 0.5], [0.7], gradient=method, **kw)
        np.testing.assert_allclose(d.grad_params, f.grad_params, rtol=1e-7)
        np.testing.assert_allclose(d.grad_y0, f.grad_y0, rtol=1e-7)


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
