"""Optimal control scenes (kind "control"): closed forms, gradients vs FD, Pontryagin checks."""
import json
import math

import numpy as np
import pytest

from diffsim import scene
from diffsim.cli import main
from diffsim.errors import SceneError
from diffsim.ode.control import SYSTEMS, Transcription
from diffsim.tasks.control import build


def _optimise(name, overrides=None):
    pb = build(scene.load(name, overrides or {}))
    return pb, pb.run_optimization(out=None, plots=False, progress=False)


@pytest.mark.parametrize("D,T", [(1.0, 1.0), (-2.5, 3.0), (0.3, 0.5)])
def test_double_integrator_matches_analytic_for_any_distance_and_time(D, T):
    # rest to rest over distance D in time T, min ∫u² dt: u* = (6D/T²)(1 − 2t/T), J* = 12D²/T³;
    # the linear spline contains u*, and RK4 integrates its cubic state and quadratic cost
    # exactly, so only the optimiser's tolerances remain
    pb, r = _optimise("double_integrator", {"solve.t1": T, "target.x": D})
    assert r["status"] == "converged", r["message"]
    Jstar = 12 * D ** 2 / T ** 3
    assert r["cost"] == pytest.approx(Jstar, rel=1e-6)
    assert r["analytic"]["cost"] == pytest.approx(Jstar, rel=1e-12)
    tr = r["trajectory"]
    ustar = 6 * D / T ** 2 * (1 - 2 * tr["t"] / T)
    umax = 6 * abs(D) / T ** 2
    assert np.max(np.abs(tr["u"][:, 0] - ustar)) <= 1e-4 * umax
    assert max(abs(v) for v in r["residual"].values()) <= 1e-8
    # costate: λ_x = −24D/T³ (constant), λ_v = −2u*; ∂H/∂u = 2u + λ_v ≈ 0; H constant
    lam = tr["lam"]
    np.testing.assert_allclose(lam[:, 0], -24 * D / T ** 3, rtol=1e-4)
    np.testing.assert_allclose(lam[:, 1], -2 * ustar, atol=1e-4 * umax)
    p = r["pontryagin"]
    assert p["free_max_abs_dHdu"] <= 1e-4 * umax
    assert p["H_spread"] <= 1e-5 * p["H_scale"]
    assert p["lam_cost_max_dev"] <= 1e-12


def _saturated_double_integrator(U):
    """Rest to rest over D = 1 in T = 1 with |u| ≤ U < 6: u* = clip(b(½ − t), −U, U),
    b from ∫(1 − t) u dt = 1 (v(1) = 0 by antisymmetry); J* = ∫u*² dt."""
    from scipy.integrate import quad
    from scipy.optimize import brentq

    def u(t, b):
        return np.clip(b * (0.5 - t), -U, U)

    def dist(b):
        return quad(lambda t: (1 - t) * u(t, b), 0, 1, points=[0.5 - U / b, 0.5 + U / b],
                    epsabs=1e-14)[0] - 1.0
    b = brentq(dist, 2 * U + 1e-9, 1e6, xtol=1e-14)
    J = quad(lambda t: u(t, b) ** 2, 0, 1, points=[0.5 - U / b, 0.5 + U / b], epsabs=1e-14)[0]
    return (lambda t: u(t, b)), J


def test_bounded_double_integrator_saturates_with_the_right_sign_of_dHdu():
    # |u| ≤ 5 < 6D/T² (and > 4, below which bang-bang cannot cover D = 1 in T = 1): the
    # optimal control is the clipped linear law; on the bound arcs Pontryagin's minimum
    # principle needs ∂H/∂u ≤ 0 at the upper bound, ≥ 0 at the lower
    pb, r = _optimise("double_integrator", {"control.lower": [-5.0], "control.upper": [5.0]})
    assert r["status"] == "converged", r["message"]
    ustar, Jstar = _saturated_double_integrator(5.0)
    tr = r["trajectory"]
    # the corners of u* fall between knots: the spline's error is O(Δ) there, O(Δ²) in J
    # (11 knots: measured 0.115 and 1.3e-4)
    assert np.max(np.abs(tr["u"][:, 0] - ustar(tr["t"]))) < 0.15
    assert r["cost"] == pytest.approx(Jstar, rel=5e-4)
    p = r["pontryagin"]
    assert p["bound_points"] >= 10
    assert p["bound_right_sign"] == p["bound_points"]
    x = pb.params.vector
    assert np.sum(x >= 5.0 - 1e-9) >= 2 and np.sum(x <= -5.0 + 1e-9) >= 2
    # where the control sits on a bound, ∂H/∂u is clearly nonzero (the bound is active)
    on = np.abs(np.abs(tr["u"][:, 0]) - 5.0) < 1e-9
    assert np.all(np.abs(tr["dHdu"][on, 0]) > 0)


def test_zermelo_follows_the_navigation_law():
    # current (w·y, 0), J = −x(T), y(T) = 0: tan θ* = w(T/2 − t), x*(T) = (V/w)(asinh z + z√(1+z²))
    pb, r = _optimise("zermelo")
    assert r["status"] == "converged", r["message"]
    z = 1.0                                            # w T / 2 with w = 1, T = 2
    Jstar = -(math.asinh(z) + z * math.sqrt(1 + z * z))
    assert r["analytic"]["cost"] == pytest.approx(Jstar, rel=1e-14)
    assert abs(r["cost"] - Jstar) < 5e-6               # 9 knots: measured 1.9e-6
    tr = r["trajectory"]
    err = np.max(np.abs(tr["u"][:, 0] - np.arctan(1.0 - tr["t"])))
    assert err < 5e-3                                  # Δ²/8·max|θ*''| ≈ 5e-3
    # λ_x = −1 (∂J/∂x(T)), λ_y(t) = ν + w(t − T) with ν = wT/2 = 1
    np.testing.assert_allclose(tr["lam"][:, 0], -1.0, atol=1e-8)
    np.testing.assert_allclose(tr["lam"][:, 1], 1.0 + (tr["t"] - 2.0), atol=1e-6)
    p = r["pontryagin"]
    assert p["H_spread"] <= 1e-3 * p["H_scale"]
    assert p["free_max_abs_dHdu"] < 1e-2


def _random_problem(name, knots, substeps, seed=0):
    pb = build(scene.load(name, {"control.knots": knots, "solve.substeps": substeps}))
    rng = np.random.default_rng(seed)
    lo, hi = pb.params.lower, pb.params.upper
    x = rng.uniform(np.maximum(lo, -2.0), np.minimum(hi, 2.0))
    pb.nu, pb.rho = rng.normal(size=len(pb.constrained)), 10.0
    return pb, x


def test_gradients_match_central_differences():
    pb, x = _random_problem("pendulum_swingup", knots=4, substeps=5)
    fd = pb.fd_gradient(x)
    _, gd = pb.value_and_grad(x, "discrete")
    np.testing.assert_allclose(gd, fd, rtol=1e-6, atol=1e-8 * np.max(np.abs(fd)))
    # the continuous adjoint differentiates the ODE, not the RK4 steps: it matches the
    # discrete gradient (= FD) to the integrator's accuracy
    _, ga = pb.value_and_grad(x, "adjoint")
    assert 0 < np.max(np.abs(ga - fd)) < 1e-3 * np.max(np.abs(fd))


def test_zermelo_adjoint_gradient_matches_central_differences():
    pb = build(scene.load("zermelo"))
    rng = np.random.default_rng(1)
    x = rng.uniform(-1.0, 1.0, len(pb.params))
    pb.nu, pb.rho = np.array([0.7]), 10.0
    _, ga = pb.value_and_grad(x, "adjoint")
    np.testing.assert_allclose(ga, pb.fd_gradient(x), rtol=1e-6, atol=1e-9)


def test_adjoint_gap_falls_with_the_step_as_rk4():
    pb, x = _random_problem("pendulum_swingup", knots=4, substeps=5)
    gaps = []
    for s in (5, 10):
        pb.substeps = s
        ga = pb.value_and_grad(x, "adjoint")[1]
        gaps.append(np.max(np.abs(ga - pb.fd_gradient(x))))   # FD: the discrete gradient
    assert gaps[0] / gaps[1] > 10            # 16 for a 4th-order gap


def test_adjoint_within_its_error_estimate():    # ~2 s; the only test of this estimate
    pb, x = _random_problem("pendulum_swingup", knots=4, substeps=5)
    ga = pb.value_and_grad(x, "adjoint")[1]
    gd = pb.value_and_grad(x, "discrete")[1]
    assert np.all(np.abs(ga - gd) <= pb.gradient_error(x, "adjoint") + 1e-12)


def test_dHdu_integrates_to_the_gradient():
    # dJ/dq_k = ∫ ∂H/∂u φ_k dt: the costate, the Hamiltonian's derivative and the
    # gradient agree (trapezoid quadrature on the grid, O(h²))
    pb, x = _random_problem("pendulum_swingup", knots=4, substeps=40)
    pm = pb.solution(x)
    t = pm["t"]
    kt = pb.tr.knot_times
    phi = np.maximum(0.0, 1.0 - np.abs(t[:, None] - kt[None, :]) / (kt[1] - kt[0]))
    integral = np.trapezoid(pm["dHdu"][:, :1] * phi, t, axis=0)
    np.testing.assert_allclose(integral, pm["gradient"], atol=1e-3 * np.max(np.abs(pm["gradient"])))


def test_knot_sweep_runs_and_writes_its_plot(tmp_path):
    from diffsim.tasks.control import knot_sweep
    rows = knot_sweep("double_integrator", knots=(2, 11), out=tmp_path)
    assert [r["knots"] for r in rows] == [2, 11]
    assert all(r["status"] == "converged" for r in rows)
    # u* is linear: a spline on any N ≥ 2 knots contains it
    assert all(r["max_control_error"] < 1e-4 * 6 for r in rows)
    assert "order_max_control_error" in rows[1]
    assert (tmp_path / "control_convergence.png").exists()


@pytest.mark.slow
def test_knot_sweep_converges_at_second_order(tmp_path):
    from diffsim.tasks.control import knot_sweep
    rows = knot_sweep("zermelo", knots=(3, 5, 9), out=tmp_path)
    assert all(r["status"] == "converged" for r in rows)
    errs = [r["max_control_error"] for r in rows]
    assert errs[0] > errs[1] > errs[2]
    # a linear spline of a smooth control: max error O(Δ²)
    assert 1.6 < rows[-1]["order_max_control_error"] < 2.6
    assert (tmp_path / "control_convergence.png").exists()


def test_transcription_layout_and_control_interpolation():
    tr = Transcription(SYSTEMS["double_integrator"], (0.0, 2.0), 5, constrained=[0, 1])
    q = tr.q([0, 1, 2, 3, 4], [], [1.0, 0.0], [0.5, -0.5], 7.0)
    assert q[tr.i_target:tr.i_target + 2].tolist() == [1.0, 0.0]
    assert q[tr.i_nu:tr.i_nu + 2].tolist() == [0.5, -0.5]
    assert q[tr.i_rho] == 7.0
    np.testing.assert_allclose(tr.control(q[tr.i_knots:], [0.25, 1.0, 2.0])[:, 0], [0.5, 2.0, 4.0])
    np.testing.assert_allclose(tr.hat_weights().sum(), 2.0)


def test_cli_optimize_writes_report_and_plot(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["optimize", "double_integrator", "--out", str(out), "--json", "--no-progress"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0, r["message"]
    assert r["success"] and r["status"] == "converged"
    assert abs(r["analytic"]["cost_error"]) < 1e-6
    assert (out / "control.png").exists() and (out / "best_params.json").exists()
    assert set(r["pontryagin"]) >= {"free_max_abs_dHdu", "bound_points", "H_spread"}
    code = main(["optimize", "double_integrator", "--out", str(out), "--no-progress", "--no-plot"])
    text = capsys.readouterr().out
    assert code == 0
    assert "Pontryagin check" in text and "∂H/∂u" in text and "J* = 12" in text


def test_cli_run_and_unreachable_target(tmp_path, capsys):
    assert main(["run", "zermelo", "--out", str(tmp_path)]) == 0
    assert "cost J" in capsys.readouterr().out
    assert (tmp_path / "control.png").exists()
    # 0.1 of acceleration cannot move 1 m in 1 s and stop: not success (exit 1)
    code = main(["optimize", "double_integrator", "--out", str(tmp_path), "--no-progress",
                 "--no-plot", "--set", "control.lower=[-0.1]", "--set", "control.upper=[0.1]"])
    captured = capsys.readouterr()
    assert code == 1
    assert "unreachable" in captured.out or "did not reach" in captured.out


@pytest.mark.parametrize("override,key", [
    ("target.z=1.0", "target.z"),
    ("params.mass=2.0", "params.mass"),
    ("control.knots=65", "control.knots"),
    ("control.lower=[30.0]", "control.lower"),
    ("solve.y0=[0.0]", "solve.y0"),
    ("solve.t1=-1.0", "solve.t1"),
    ("optimize.params=['v']", "optimize.params"),
    ("constraint.method='exact'", "constraint.method"),
])
def test_bad_scene_values_are_refused_naming_the_key(override, key, capsys):
    with pytest.raises(SceneError) as e:
        scene.load("double_integrator", [override])
    assert key in str(e.value) and "double_integrator.toml" in str(e.value)
    assert main(["optimize", "double_integrator", "--no-plot", "--no-progress", "--set", override]) == 2
    assert key in capsys.readouterr().err


def test_resume_continues_the_augmented_lagrangian_loop(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["optimize", "zermelo", "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "--resume needs" in capsys.readouterr().err
    # a budget too small stops mid-way (exit 1); --resume goes on from the saved state
    assert main(["optimize", "double_integrator", "--out", str(out), "--no-progress", "--no-plot",
                 "--json", "--iterations", "25"]) == 1
    first = json.loads(capsys.readouterr().out)
    assert first["status"] == "max_iterations" and first["iterations"] == 25
    state = json.loads((out / "control_state.json").read_text())
    assert state["used"] <= 25 and (out / "checkpoint.json").exists()
    code = main(["optimize", "double_integrator", "--out", str(out), "--no-progress", "--no-plot",
                 "--json", "--resume"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0, r["message"]
    assert r["iterations"] > 25 and r["updates"][0]["update"] <= len(first["updates"])
    assert abs(r["analytic"]["cost_error"]) < 1e-6


@pytest.mark.slow
def test_pendulum_swingup_saturates_with_the_right_sign_of_dHdu():
    # the bundled swing-up (~30 s): |u| ≤ 4 is active on several arcs; no closed form, so
    # the checks are Pontryagin's: the sign of ∂H/∂u on every bound arc, the residual
    pb, r = _optimise("pendulum_swingup")
    assert r["status"] == "converged", r["message"]
    p = r["pontryagin"]
    assert p["bound_points"] >= 48 and p["bound_right_sign"] == p["bound_points"]
    assert max(abs(v) for v in r["residual"].values()) <= 1e-8
    x = pb.params.vector
    assert np.sum(x >= 4.0 - 1e-9) >= 3 and np.sum(x <= -4.0 + 1e-9) >= 3
