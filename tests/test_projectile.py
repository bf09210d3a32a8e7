"""Projectile kernel: gradients vs central finite differences (float64) and closed forms."""
import math

import numpy as np
import pytest

from diffsim.errors import DiffsimError, SimulationError
from diffsim.systems.projectile import INPUTS, Projectile

G = 9.81
PARAMS = ("speed", "angle", "height", "gravity", "drag", "wind_x", "restitution")


# Central-difference step per input's natural scale: drag is ~1e-3 1/m, and its
# derivatives are ~1e4, so a step of 1e-6 would carry a truncation error of ~3e-6.
SCALE = {"drag": 1e-3}


def fd_grad(sim, name, objective, h=1e-6):
    base = sim.get_inputs()[name].copy()
    out = np.zeros(sim.B)
    for b in range(sim.B):
        step = h * max(SCALE.get(name, 1.0), abs(base[b]))
        v = base.copy(); v[b] += step; sim.set_inputs(**{name: v}); fp = sim.forward(objective)
        v = base.copy(); v[b] -= step; sim.set_inputs(**{name: v}); fm = sim.forward(objective)
        out[b] = (fp - fm) / (2 * step)
    sim.set_inputs(**{name: base})
    return out


@pytest.fixture(scope="module")
def bouncy():
    """Four cannons with drag, wind and one bounce, over 2 segments (> MAX_FUSED_STEPS);
    RK4 (the default)."""
    sim = Projectile(4, steps=900, dt=0.01, bounces=1)
    sim.set_inputs(speed=[40, 30, 20, 50], angle=[0.7, 0.5, 1.0, 0.3], height=[0, 2, 5, 1],
                   drag=[0.0, 0.001, 0.002, 0.003], wind_x=[2.0, -3.0, 1.0, 4.0],
                   restitution=[0.5, 0.6, 0.3, 0.8], gravity=G, target_x=100.0)
    return sim


@pytest.mark.parametrize("objective", ["range", "flight_time", "miss"])
def test_gradients_match_central_differences_through_a_bounce(bouncy, objective):
    bouncy.forward(objective)
    assert bouncy.outputs()["landed"].all() and (bouncy.outputs()["bounces"] == 1).all()
    g = bouncy.backward()
    for name in PARAMS:
        fd = fd_grad(bouncy, name, objective)
        np.testing.assert_allclose(g[name], fd, rtol=1e-6, atol=1e-7, err_msg=f"d{objective}/d{name}")


def test_gradient_agrees_with_a_wide_secant_through_a_bounce(bouncy):
    """AD and FD at h=1e-6 agree even on a sawtooth; a secant over 0.01 rad does not.
    An impact handled without continuity in the impact phase fails this test."""
    bouncy.forward("range")
    g = bouncy.backward()["angle"]
    base = bouncy.get_inputs()["angle"].copy()
    h = 0.005
    vals = []
    for s in (-1, 1):
        bouncy.set_inputs(angle=base + s * h)
        bouncy.forward("range")
        vals.append(bouncy.outputs()["land_x"] - bouncy.get_inputs()["x0"])
    bouncy.set_inputs(angle=base)
    secant = (vals[1] - vals[0]) / (2 * h)
    np.testing.assert_allclose(g, secant, rtol=0.05)


@pytest.fixture(scope="module")
def vacuum():
    sim = Projectile(3, steps=1000, dt=0.01, integrator="rk4")
    sim.set_inputs(speed=[20.0, 35.0, 50.0], angle=[0.3, 0.6, 1.1], gravity=G)
    return sim


def test_range_and_gradients_match_vacuum_closed_form(vacuum):
    """RK4 is exact for constant acceleration and the Hermite impact is exact for a
    parabola, so R = v² sin2θ / g holds to round-off, and so do its derivatives."""
    vacuum.forward("range")
    v, th = np.array([20.0, 35.0, 50.0]), np.array([0.3, 0.6, 1.1])
    np.testing.assert_allclose(vacuum.outputs()["land_x"], v**2 * np.sin(2 * th) / G, rtol=1e-10)
    np.testing.assert_allclose(vacuum.outputs()["land_t"], 2 * v * np.sin(th) / G, rtol=1e-10)
    g = vacuum.backward()
    np.testing.assert_allclose(g["angle"], 2 * v**2 * np.cos(2 * th) / G, rtol=1e-8)
    np.testing.assert_allclose(g["speed"], 2 * v * np.sin(2 * th) / G, rtol=1e-8)
    np.testing.assert_allclose(g["gravity"], -v**2 * np.sin(2 * th) / G**2, rtol=1e-8)


def test_symplectic_euler_converges_to_the_closed_form_at_first_order():
    errs = []
    for dt in (0.02, 0.01, 0.005):
        sim = Projectile(1, steps=int(round(6 / dt)), dt=dt, integrator="symplectic_euler")
        sim.set_inputs(speed=30.0, angle=0.7, gravity=G)
        sim.forward("range")
        errs.append(abs(sim.outputs()["land_x"][0] - 900 * math.sin(1.4) / G))
    order = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(order > 0.8) and np.all(order < 1.3), order


def test_3d_gradients_including_azimuth_and_cross_wind():
    sim = Projectile(2, steps=600, dt=0.01, dims=3, integrator="symplectic_euler")
    sim.set_inputs(speed=[30, 40], angle=[0.6, 0.4], azimuth=[0.3, -0.5], drag=0.002,
                   wind_x=2.0, wind_z=[-3.0, 1.5], gravity=G, target_x=60.0, target_z=20.0)
    sim.forward("miss")
    g = sim.backward()
    for name in ("speed", "angle", "azimuth", "wind_x", "wind_z", "drag"):
        np.testing.assert_allclose(g[name], fd_grad(sim, name, "miss"), rtol=1e-6, atol=1e-7,
                                   err_msg=name)
    assert abs(sim.outputs()["land_z"]).min() > 1.0  # it really went sideways


def test_segmented_horizon_equals_a_single_segment(monkeypatch):
    import diffsim.runtime as rt
    out = []
    for max_fused in (rt.MAX_FUSED_STEPS, 37):
        monkeypatch.setattr(rt, "MAX_FUSED_STEPS", max_fused)
        sim = Projectile(2, steps=400, dt=0.01, bounces=1)
        sim.set_inputs(speed=[25, 15], angle=[0.8, 0.4], drag=0.001, gravity=G)
        f = sim.forward("flight_time")
        out.append((f, sim.backward()["angle"], len(sim.segs)))
    assert out[0][2] == 1 and out[1][2] == 11
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-12)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-10)


def test_large_batch_runs_in_one_launch_per_segment():
    sim = Projectile(16384, steps=450, dt=0.01)
    angles = np.linspace(0.1, 1.4, 16384)
    sim.set_inputs(speed=20.0, angle=angles, gravity=G)
    sim.forward("range")
    g = sim.backward()
    assert np.isfinite(g["angle"]).all()
    o = sim.outputs()
    assert o["landed"].all()
    assert np.argmax(o["land_x"]) == pytest.approx(np.argmin(abs(angles - math.pi / 4)), abs=60)


def test_blow_up_is_reported_not_returned():
    sim = Projectile(1, steps=50, dt=1.0)
    sim.set_inputs(speed=1e3, angle=0.0, height=1e9, drag=5.0, gravity=G)
    with pytest.raises(SimulationError, match="blow up.*lower sim.dt"):
        sim.forward("range")
    sim.set_inputs(speed=float("nan"), drag=0.0)
    with pytest.raises(SimulationError, match="speed.*NaN"):
        sim.forward("range")


def test_bad_arguments_name_the_argument():
    with pytest.raises(DiffsimError, match="dt"):
        Projectile(1, steps=10, dt=float("nan"))
    with pytest.raises(DiffsimError, match="dt"):
        Projectile(1, steps=10, dt=-0.1)
    with pytest.raises(DiffsimError, match="integrator"):
        Projectile(1, steps=10, integrator="leapfrog9")
    sim = Projectile(1, steps=10)
    with pytest.raises(DiffsimError, match="unknown projectile input"):
        sim.set_inputs(velocity=3)
    assert set(sim.get_inputs()) == set(INPUTS)
