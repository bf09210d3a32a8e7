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


@pytest.fixture(scope="module", params=["rk4", "midpoint"])
def vacuum(request):
    sim = Projectile(3, steps=1000, dt=0.01, integrator=request.param)
    sim.set_inputs(speed=[20.0, 35.0, 50.0], angle=[0.3, 0.6, 1.1], gravity=G)
    return sim


def test_range_and_gradients_match_vacuum_closed_form(vacuum):
    """RK4 and the midpoint method (order ≥ 2) are exact for constant acceleration and
    the Hermite impact is exact for a parabola, so R = v² sin2θ / g holds to round-off,
    and so do its derivatives (the hand-written adjoint's, from the same tableau)."""
    vacuum.forward("range")
    v, th = np.array([20.0, 35.0, 50.0]), np.array([0.3, 0.6, 1.1])
    np.testing.assert_allclose(vacuum.outputs()["land_x"], v**2 * np.sin(2 * th) / G, rtol=1e-10)
    np.testing.assert_allclose(vacuum.outputs()["land_t"], 2 * v * np.sin(th) / G, rtol=1e-10)
    g = vacuum.backward()
    np.testing.assert_allclose(g["angle"], 2 * v**2 * np.cos(2 * th) / G, rtol=1e-8)
    np.testing.assert_allclose(g["speed"], 2 * v * np.sin(2 * th) / G, rtol=1e-8)
    np.testing.assert_allclose(g["gravity"], -v**2 * np.sin(2 * th) / G**2, rtol=1e-8)


def test_semi_implicit_euler_converges_to_the_closed_form_at_first_order():
    errs = []
    for dt in (0.02, 0.01, 0.005):
        sim = Projectile(1, steps=int(round(6 / dt)), dt=dt, integrator="semi_implicit_euler")
        sim.set_inputs(speed=30.0, angle=0.7, gravity=G)
        sim.forward("range")
        errs.append(abs(sim.outputs()["land_x"][0] - 900 * math.sin(1.4) / G))
    order = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(order > 0.8) and np.all(order < 1.3), order


def test_midpoint_converges_at_second_order_with_drag_and_wind():
    """The order the cannon's error estimates assume (the registry's) is the one observed
    with velocity-dependent forces: the landing point's error against an RK4 run at a
    much smaller step shrinks 4x per halving of dt."""
    def land(integ, dt):
        sim = Projectile(1, steps=int(round(5 / dt)), dt=dt, integrator=integ)
        sim.set_inputs(speed=30.0, angle=0.7, gravity=G, drag=0.02, wind_x=-3.0)
        sim.forward("range")
        return sim.outputs()["land_x"][0]
    ref = land("rk4", 0.001)
    errs = np.array([abs(land("midpoint", dt) - ref) for dt in (0.02, 0.01, 0.005)])
    order = np.log2(errs[:-1] / errs[1:])
    assert np.all(order > 1.7) and np.all(order < 2.3), (errs, order)


def test_3d_gradients_including_azimuth_and_cross_wind():
    sim = Projectile(2, steps=600, dt=0.01, dims=3, integrator="semi_implicit_euler")
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


def test_one_launch_forward_equals_the_launch_per_segment_sweep(monkeypatch):
    """A plain forward pass is one launch (the tape's ``whole``: start, every segment and
    the objective); it leaves bitwise the values and checkpoints of the launch-per-piece
    sweep that the reverse and tangent sweeps build on (3D, bounces, 11 segments)."""
    import diffsim.runtime as rt
    monkeypatch.setattr(rt, "MAX_FUSED_STEPS", 37)
    sim = Projectile(5, steps=400, dt=0.01, dims=3, bounces=2)
    sim.set_inputs(speed=np.linspace(12, 30, 5), angle=np.linspace(0.3, 1.2, 5), azimuth=0.2,
                   drag=0.002, wind_z=1.5, restitution=[0.0, 0.3, 0.5, 0.6, 0.7], gravity=G)
    calls = []
    whole = sim._tape.k.whole
    monkeypatch.setattr(sim._tape.k, "whole", lambda *a: (calls.append(a), whole(*a))[1])
    f = sim.forward("miss", strict=False)
    assert len(calls) == 1 and len(sim.segs) == 11
    one = [sim._res.copy()] + [x.to_numpy() for x in (*sim.state, sim.alive, sim.nbounce)]
    g1 = sim.backward()
    sim._tape.forward(sim._objective_args, segment_args=sim._tape._seg_args)  # per piece
    assert len(calls) == 1
    per = [sim._res.copy()] + [x.to_numpy() for x in (*sim.state, sim.alive, sim.nbounce)]
    for a, b in zip(one, per):
        np.testing.assert_array_equal(a, b)
    assert f == sim._res[-2, 0] and sim.outputs()["bounces"].max() == 2
    g2 = sim.backward()
    for n in INPUTS:
        np.testing.assert_array_equal(g1[n], g2[n])


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


def test_serial_and_parallel_batch_loops_give_identical_values_and_gradients():
    """Small batches run their batch loops serially (launch latency); the same inputs
    forced through both variants give the same per-cannon outputs and gradients (to
    round-off), for
    every objective (3D, drag, wind, a bounce, two segments)."""
    from diffsim.systems.projectile import SERIAL_MAX_BATCH
    assert Projectile(1, steps=10).serial and not Projectile(SERIAL_MAX_BATCH + 1, steps=10).serial
    sims = [Projectile(4, steps=900, dt=0.01, dims=3, bounces=1, serial=s) for s in (True, False)]
    assert [s.serial for s in sims] == [True, False]
    for sim in sims:
        sim.set_inputs(speed=[40, 30, 20, 50], angle=[0.7, 0.5, 1.0, 0.3], height=[0, 2, 5, 1],
                       azimuth=[0.1, -0.2, 0.3, 0.0], drag=[0.0, 0.001, 0.002, 0.003],
                       wind_x=[2.0, -3.0, 1.0, 4.0], wind_z=[0.5, 0.0, -1.0, 2.0],
                       restitution=[0.5, 0.6, 0.3, 0.8], gravity=G, target_x=100.0, target_z=5.0)
    assert len(sims[0].segs) == 2
    for objective, maximize in (("miss", False), ("range", True), ("flight_time", False)):
        f = [sim.forward(objective, maximize) for sim in sims]
        o = [sim.outputs() for sim in sims]
        g = [sim.backward() for sim in sims]
        assert o[0]["landed"].all() and (o[0]["bounces"] == 1).all()
        assert f[0] == pytest.approx(f[1], rel=1e-14)  # sum order may differ in parallel
        for key in ("landed", "bounces"):
            np.testing.assert_array_equal(o[0][key], o[1][key], err_msg=key)
        # Same arithmetic per cannon; the two compilations may round the last bit apart
        # (1 ulp seen in a gradient), nothing more.
        for key in ("land_x", "land_z", "land_t"):
            np.testing.assert_allclose(o[0][key], o[1][key], rtol=1e-13, atol=0, err_msg=key)
        overall = max(np.abs(g[1][n]).max() for n in INPUTS)
        for name in INPUTS:
            # a gradient that is 0 up to round-off (d range / d x0 = 1 - 1) is compared
            # against the largest gradient's scale
            scale = max(np.abs(g[1][name]).max(), 1e-3 * overall)
            np.testing.assert_allclose(g[0][name], g[1][name], rtol=1e-13, atol=1e-13 * scale,
                                       err_msg=f"d{objective}/d{name}")
        assert np.abs(g[0]["angle"]).min() > 0 and np.abs(g[0]["azimuth"]).max() > 0


def test_backward_starts_from_clean_gradients_after_any_sequence():
    """backward() resets the gradients as it reads them out (no clearing launch): a
    backward after another objective's backward, after refined_outputs and after trace
    equals a fresh one, and equals central differences."""
    sim = Projectile(2, steps=400, dt=0.01)
    sim.set_inputs(speed=[30.0, 25.0], angle=[0.6, 0.9], drag=0.001, gravity=G, target_x=50.0)
    sim.forward("miss"); ref = sim.backward()
    sim.forward("range"); sim.backward()
    sim.refined_outputs(2)
    sim.trace()
    sim.forward("miss"); again = sim.backward()
    for name in INPUTS:
        np.testing.assert_array_equal(ref[name], again[name], err_msg=name)
    np.testing.assert_allclose(ref["speed"], fd_grad(sim, "speed", "miss"), rtol=1e-6)


def test_an_interrupted_backward_does_not_leak_into_the_next():
    from diffsim.systems import projectile_reverse
    sim = Projectile(2, steps=800, dt=0.01, integrator="rk4")
    projectile_reverse.use(sim, False)      # Taichi's autodiff: the path with launches to interrupt
    sim.set_inputs(speed=[30.0, 35.0], angle=[0.6, 0.8], drag=0.001, gravity=9.81, target_x=90.0)
    sim.forward("miss")
    want = sim.backward()["angle"].copy()
    sim.forward("miss")
    launch = sim._k["launch"]

    class Interrupted:                      # Ctrl-C after the segments' gradients ran
        @staticmethod
        def grad():
            raise KeyboardInterrupt
    sim._k["launch"] = Interrupted
    with pytest.raises(KeyboardInterrupt):
        sim.backward()
    sim._k["launch"] = launch
    np.testing.assert_array_equal(sim.backward()["angle"], want)


@pytest.mark.parametrize("objective", ["miss", "range", "flight_time"])
def test_per_cannon_terms_from_the_kernel(objective):
    """terms(): each cannon's weighted, signed objective term as the kernel summed it,
    from the forward pass's last launch and from a tangent sweep's, against the formula
    applied to the outputs."""
    sim = Projectile(3, steps=400, dt=0.01, dims=3)
    sim.set_inputs(speed=[10.0, 14.0, 18.0], angle=[0.3, 0.6, 0.9], azimuth=0.2,
                   target_x=12.0, target_z=1.0)
    sim.weight.from_numpy(np.array([1.0, 0.5, 2.0]))
    with pytest.raises(DiffsimError, match="forward"):
        sim.terms()
    total = sim.forward(objective, maximize=True)
    o, i = sim.outputs(), sim.get_inputs()
    dx, dz = o["land_x"] - i["target_x"], o["land_z"] - i["target_z"]
    val = {"miss": 0.5 * (dx * dx + dz * dz),
           "range": np.hypot(o["land_x"] - i["x0"], o["land_z"] - i["z0"]),
           "flight_time": o["land_t"]}[objective]
    want = -np.array([1.0, 0.5, 2.0]) * val
    np.testing.assert_allclose(sim.terms(), want, rtol=1e-13)
    assert sim.terms().sum() == pytest.approx(total, rel=1e-13)
    sim.forward_tangent(["angle"], objective, maximize=True)
    np.testing.assert_allclose(sim.terms(), want, rtol=1e-13)


def test_integrator_names_are_the_solver_registrys_and_the_old_name_is_refused(tmp_path):
    """One name per method across systems: the cannon's integrators are named (and
    ordered) as in diffsim.ode.solvers.SOLVERS; 'symplectic_euler' is refused naming
    'semi_implicit_euler', in Python and in a scene file."""
    import diffsim
    from diffsim.errors import SceneError
    from diffsim.ode.solvers import SOLVERS
    from diffsim.systems.projectile import INTEGRATORS
    from diffsim.tasks.cannon import ORDER
    assert set(INTEGRATORS) <= set(SOLVERS)
    assert ORDER == {"semi_implicit_euler": 1, "euler": 1, "midpoint": 2, "rk4": 4}
    with pytest.raises(DiffsimError, match="renamed 'semi_implicit_euler'"):
        Projectile(1, integrator="symplectic_euler")
    with pytest.raises(SceneError, match="sim.integrator.*renamed; use 'semi_implicit_euler'"):
        diffsim.build("cannon", ["sim.integrator='symplectic_euler'"])
