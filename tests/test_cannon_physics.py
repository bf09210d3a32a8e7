"""Cannon physics honesty: coarse first steps, restitution 0, horizons, stale backward,
huge sizes, model error against an exact solve, honest status words, plots."""
import logging
import math

import numpy as np
import pytest

import diffsim
from diffsim.errors import DiffsimError, SimulationError
from diffsim.systems.projectile import Projectile

G = 9.81


def fd(sim, name, objective="range", h=1e-6):
    base = sim.get_inputs()[name].copy()
    out = np.zeros(sim.B)
    for b in range(sim.B):
        step = h * max(1.0, abs(base[b]))
        v = base.copy(); v[b] += step; sim.set_inputs(**{name: v})
        fp = sim.forward(objective, strict=False)
        v = base.copy(); v[b] -= step; sim.set_inputs(**{name: v})
        fm = sim.forward(objective, strict=False)
        out[b] = (fp - fm) / (2 * step)
    sim.set_inputs(**{name: base})
    return out


@pytest.fixture(scope="module")
def coarse():
    """Two cannons, one step (1 s) longer than their whole flight, launched from y = 0."""
    return Projectile(2, steps=10, dt=1.0)


def test_first_step_through_the_ground_is_not_an_impact_at_the_muzzle(coarse):
    """The take-off (s = 0) is not the impact. RK4 + Hermite are exact in vacuum, so even
    this step lands right, gradients included."""
    sim = coarse
    v, th = np.array([10.0, 12.0]), np.array([0.3, 0.5])
    sim.set_inputs(speed=v, angle=th, drag=0.0, wind_x=0.0)
    sim.forward("range", strict=False)
    o = sim.outputs()
    np.testing.assert_allclose(o["land_x"], v**2 * np.sin(2 * th) / G, rtol=1e-10)
    np.testing.assert_allclose(o["land_t"], 2 * v * np.sin(th) / G, rtol=1e-10)
    g = sim.backward()
    np.testing.assert_allclose(g["angle"], 2 * v**2 * np.cos(2 * th) / G, rtol=1e-8)
    # ... but such a step is refused by default: with drag it would not be exact
    with pytest.raises(SimulationError, match="too coarse.*use dt <="):
        sim.forward("range")


def test_deflated_first_step_gradients_match_central_differences_with_drag(coarse):
    sim = coarse
    sim.set_inputs(speed=[10.0, 12.0], angle=[0.3, 0.9], drag=0.01, wind_x=-2.0)
    sim.forward("range", strict=False)
    assert (sim.outputs()["land_x"] > 1.0).all()  # not at the muzzle
    g = sim.backward()
    for name in ("speed", "angle", "drag", "wind_x", "gravity"):
        np.testing.assert_allclose(g[name], fd(sim, name), rtol=1e-6, atol=1e-8, err_msg=name)


def test_readme_snippet_numbers_and_the_sign_of_the_gradient():
    """README: 1,024 cannons, bounces=1 with the default restitution 0 (the first impact
    is the landing), a horizon long enough for the slowest (steps=2000 at dt=0.005)."""
    angles = np.linspace(0.1, 1.4, 1024)
    sim = Projectile(batch=1024, steps=2000, dt=0.005, bounces=1)
    sim.set_inputs(speed=40.0, angle=angles, drag=0.002, wind_x=-3.0)
    total = sim.forward("range")
    assert sim.outputs()["landed"].all() and (sim.outputs()["bounces"] == 0).all()
    g = sim.backward()["angle"]
    assert total == pytest.approx(98160.7, abs=0.1)
    assert g[0] == pytest.approx(290.74, abs=0.01) and g[-1] < 0  # low angles: raise → further
    for b in (0, 700):
        v = angles.copy(); v[b] += 1e-6; sim.set_inputs(angle=v); fp = sim.forward("range")
        v = angles.copy(); v[b] -= 1e-6; sim.set_inputs(angle=v); fm = sim.forward("range")
        assert g[b] == pytest.approx((fp - fm) / 2e-6, rel=1e-6)


@pytest.fixture(scope="module")
def two():
    """Two cannons over 6 s (600 steps of 0.01 s) with up to two bounces, symplectic Euler
    (the bounce FD tests in test_projectile.py run RK4)."""
    return Projectile(2, steps=600, dt=0.01, bounces=2, integrator="semi_implicit_euler")


def test_restitution_zero_bounce_is_the_landing_and_its_gradient_is_right(two):
    sim = two
    sim.set_inputs(speed=[20.0, 25.0], angle=[0.4, 0.8], drag=0.002, restitution=0.0)
    sim.forward("range")
    assert (sim.outputs()["bounces"] == 0).all()
    g = sim.backward()
    for name in ("angle", "speed", "drag"):
        np.testing.assert_allclose(g[name], fd(sim, name), rtol=1e-6, atol=1e-8, err_msg=name)
    sim.set_inputs(restitution=0.5, speed=[12.0, 15.0])  # with e > 0 they bounce, twice
    sim.forward("range")
    assert (sim.outputs()["bounces"] == 2).all()
    g = sim.backward()
    for name in ("angle", "restitution", "drag"):
        np.testing.assert_allclose(g[name], fd(sim, name), rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("integrator", ["semi_implicit_euler", "rk4"])
def test_bounced_landing_is_smooth_in_the_parameters(integrator):
    """401 cannons with drags 1.5e-3 … 2.5e-3 1/m, two bounces: the landing's slope along
    drag has no jumps (impacts crossing step boundaries). Hermite-derivative impact
    velocities with symplectic Euler made jumps of 150 % of the slope here."""
    drag = np.linspace(0.0015, 0.0025, 401)
    sim = Projectile(401, steps=600, dt=0.01, bounces=2, integrator=integrator)
    sim.set_inputs(speed=15.0, angle=0.8, restitution=0.5, drag=drag)
    sim.forward("range")
    assert (sim.outputs()["bounces"] == 2).all()
    slope = np.diff(sim.outputs()["land_x"]) / np.diff(drag)
    assert np.abs(np.diff(slope)).max() < 0.05 * np.median(np.abs(slope))


def test_backward_is_guarded_and_idempotent(two):
    with pytest.raises(DiffsimError, match="needs a forward"):
        Projectile(1, steps=10).backward()  # no kernel compiled yet: cheap
    sim = two
    sim.set_inputs(speed=[20.0, 25.0], drag=0.001, restitution=0.0)
    sim.forward("range")
    g1 = sim.backward()["angle"].copy()
    g2 = sim.backward()["angle"]
    np.testing.assert_array_equal(g1, g2)  # cleared, not accumulated
    sim.set_inputs(angle=0.9)
    with pytest.raises(DiffsimError, match="inputs changed since the last forward"):
        sim.backward()
    sim.forward("range")
    sim.trace()
    with pytest.raises(DiffsimError):
        sim.backward()
    # a horizon shorter than a flight is refused, with how many and what to use; the
    # refused forward leaves nothing to differentiate
    sim.set_inputs(speed=40.0, angle=[0.3, 1.4])
    with pytest.raises(SimulationError, match=r"1 of 2 cannons had not landed.*steps = \d+ "):
        sim.forward("range")
    with pytest.raises(DiffsimError, match="needs a forward"):
        sim.backward()
    sim.forward("range", strict=False)
    assert sim.outputs()["landed"].tolist() == [True, False]


def test_enormous_sizes_are_refused_before_allocating():
    with pytest.raises(DiffsimError, match=r"TiB.*DIFFSIM_MAX_BYTES"):
        Projectile(10**6, steps=10**9)
    with pytest.raises(DiffsimError) as e:
        diffsim.build("cannon", ["launch.speed=1e300"])
    msg = str(e.value)
    assert "launch.speed" in msg and "1e+300" in msg
    assert not any(len(tok) > 30 for tok in msg.split())  # no 150-digit step counts
    with pytest.raises(DiffsimError, match="sim.t_max"):
        diffsim.build("cannon", ["sim.t_max=1e12", "sim.dt=1e-6"])


def exact_landing(angle, speed, drag, wind, g=G):
    """Landing x [m] of the exact ODE (DOP853, event location at y = 0)."""
    from scipy.integrate import solve_ivp

    def rhs(t, s):
        x, y, vx, vy = s
        rx = vx - wind
        sp = math.hypot(rx, vy)
        return [vx, vy, -drag * sp * rx, -g - drag * sp * vy]

    def ground(t, s):
        return s[1]
    ground.terminal, ground.direction = True, -1
    sol = solve_ivp(rhs, (0, 100), [0, 0, speed * math.cos(angle), speed * math.sin(angle)],
                    method="DOP853", rtol=1e-12, atol=1e-12, events=ground)
    return sol.y_events[0][0][0]


def test_default_cannon_miss_holds_for_the_exact_ode():
    pb = diffsim.build("cannon")
    res, rep = pb.aim()
    assert rep["success"] and rep["status"] == "converged", rep
    x = exact_landing(rep["params"]["angle"], 45.0, 0.002, -4.0)
    true_miss = abs(x - 120.0)
    assert true_miss < pb.tolerance
    assert true_miss <= rep["miss"][0] + rep["model_error"][0] + 1e-9
    assert rep["model_error"][0] < 1e-6
    assert rep["warnings"] == [] and pb.warnings(res.x) == []


def test_model_error_estimates_the_true_error_and_status_words_are_honest():
    pb = diffsim.build("cannon", ["sim.integrator='semi_implicit_euler'", "sim.dt=0.005"])
    s = pb.summary({"angle": 0.4})
    true_err = abs(s["landing_x"][0] - exact_landing(0.4, 45.0, 0.002, -4.0))
    assert 0.5 < s["model_error"][0] / true_err < 2.0, (s["model_error"], true_err)
    assert any("model error" in w for w in s["warnings"])
    # out of iterations on a target within reach: not "unreachable"
    res, rep = pb.aim(iterations=3)
    assert not rep["success"] and rep["status"] == "max_iterations"
    assert rep["reachable"].tolist() == [True] and rep["min_range"][0] < 120 < rep["max_range"][0]
    assert "not hit after 3 iterations" in rep["message"] and "lbfgs" in rep["message"]
    assert "unreachable" not in rep["message"]
    # hit by the simulation, but its model error (0.22 m) exceeds the 1 mm tolerance
    res, rep = pb.aim(optimizer="lbfgs")
    assert rep["miss"][0] < 1e-3 and not rep["hit"][0] and not rep["success"]
    assert rep["status"] == "model_error_above_tolerance"
    assert "model error" in rep["message"] and "sim.dt" in rep["message"]


def test_warnings_name_unlanded_cannons_and_enormous_gradients(monkeypatch):
    pb = diffsim.build("cannon", ["sim.t_max=2.0"])
    w = pb.warnings()
    assert any("still flying at t_max = 2" in s for s in w), w
    assert "STILL FLYING" in pb.summary_text(pb.summary())
    orig = pb._value_and_grad
    monkeypatch.setattr(pb, "_value_and_grad", lambda x, m: (orig(x, m)[0], orig(x, m)[1] * 1e12))
    assert any("enormous gradient" in s and "angle" in s for s in pb.warnings())


def test_trajectory_plot_starts_at_the_ground_draws_a_handful_and_does_not_warn(caplog):
    import matplotlib
    matplotlib.use("Agg")
    from diffsim.plots import cannon as plot
    t = np.linspace(0, 1, 50)
    snaps = []
    for it in range(150):
        tr = np.zeros((50, 2, 3))
        tr[:, :, 0] = (100 + it) * t[:, None]
        tr[:, :, 1] = 40 * (t * (1 - t))[:, None]
        snaps.append((it, tr))
    with caplog.at_level(logging.WARNING):
        fig = plot.trajectories_figure(snaps, np.array([100.0, 150.0]))
        fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0.0
    assert len(ax.lines) <= 6 * 2 + 1  # six snapshots of two cannons and the ground line
    assert len(fig.axes) == 2  # the colour bar
    assert not caplog.records, [r.getMessage() for r in caplog.records]
