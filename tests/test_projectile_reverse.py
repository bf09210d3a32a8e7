"""The cannon's hand-written reverse sweep (diffsim/systems/projectile_reverse.py): equal to
Taichi's autodiff of the forward kernels to round-off and to central differences (float64),
in 2D and 3D, for every objective, with cannons landing in different horizon segments and
cannons still flying at the horizon; and Taichi's autodiff wherever it does not apply."""
import numpy as np
import pytest

from diffsim.systems import projectile_reverse as R
from diffsim.systems.projectile import INPUTS, OBJECTIVES, Projectile

# 700 steps of 5 ms = 2 segments of 350 (runtime.MAX_FUSED_STEPS = 500): flights of
# ~1 s land in the first, ~2.6 s in the second, ~6 s are still flying at 3.5 s.
STEPS, DT = 700, 0.005


def _inputs(B, dims):
    return dict(speed=np.linspace(8, 40, B), angle=np.linspace(0.3, 1.1, B),
                height=np.linspace(0.0, 4.0, B), x0=np.linspace(-1, 2, B),
                z0=np.linspace(0.5, -0.5, B), drag=np.linspace(0.0, 0.02, B),
                wind_x=np.linspace(-4, 3, B), gravity=9.81, target_x=30.0, target_z=-2.0,
                **(dict(azimuth=np.linspace(-0.4, 0.6, B), wind_z=np.linspace(1.5, -2, B))
                   if dims == 3 else {}))


@pytest.fixture(scope="module")
def sims():
    """(dims, integrator, serial) -> a Projectile; B not a multiple of the group size."""
    out = {}
    for dims, integ, serial, B, bounces in ((2, "semi_implicit_euler", False, 9, 0),
                                            (3, "semi_implicit_euler", True, 7, 2),
                                            (3, "rk4", True, 5, 2),
                                            (2, "euler", True, 5, 1),
                                            (2, "midpoint", False, 6, 1)):
        sim = Projectile(B, steps=STEPS, dt=DT, dims=dims, integrator=integ, serial=serial,
                         bounces=bounces)
        sim.set_inputs(**_inputs(B, dims))
        if bounces:   # restitution 0 (lands at the first impact) up to 0.7
            sim.set_inputs(restitution=np.linspace(0.0, 0.7, B))
        out[dims, integ] = sim
    return out


def _both(sim, objective, maximize=False):
    """(hand-written gradient, Taichi autodiff gradient), each an (inputs, B) array."""
    sim.forward(objective, maximize, strict=False)
    assert R.reason_not_used(sim) is None
    mine = sim.backward()
    R.use(sim, False)
    try:
        ref = sim.backward()
    finally:
        R.use(sim, True)
    return (np.array([mine[n] for n in INPUTS]), np.array([ref[n] for n in INPUTS]))


@pytest.mark.parametrize("key", [(2, "semi_implicit_euler"), (3, "semi_implicit_euler"),
                                 # Taichi's reverse RK4 kernel alone compiles in ~5-9 s;
                                 # test_equals_central_differences covers the same path
                                 pytest.param((3, "rk4"), marks=pytest.mark.slow)])
def test_equals_taichi_autodiff(sims, key):
    sim = sims[key]
    sim.forward("miss", strict=False)
    o = sim.outputs()
    # the batch mixes landings in both segments and cannons still flying at the horizon
    # (and with bounces: cannons landing at the first impact, after one and after two)
    assert (~o["landed"]).any() and (o["land_t"] < STEPS * DT / 2).any()
    assert ((o["land_t"] > STEPS * DT / 2) & o["landed"]).any()
    if sim.bounces:
        assert 0 in o["bounces"][o["landed"]] and o["bounces"].max() == sim.bounces
    # RK4 through two bounces: Taichi's autodiff gradient itself moves by ~3e-11
    # relative when the speed moves by 1e-14 relative (this one by 1e-13), and the two
    # differ by ~2e-11
    rtol = 1e-10 if sim.integrator == "rk4" and sim.bounces else 1e-12
    for objective in OBJECTIVES:
        for maximize in (False, True):
            mine, ref = _both(sim, objective, maximize)
            scale = np.abs(ref).max()
            assert scale > 0
            # per input, relative to its largest entry (round-off of an exactly-zero
            # derivative, e.g. d range / d x0 = 1 - 1, against the vector's scale)
            tol = rtol * np.maximum(np.abs(ref).max(axis=1, keepdims=True), 1e-3 * scale)
            err = np.abs(mine - ref)
            assert (err <= tol).all(), (objective, maximize, [INPUTS[i] for i in np.where((err > tol).any(axis=1))[0]],
                                        float((err / tol).max()))


def _terms(sim, objective):
    """Each cannon's term of the objective, from the outputs of the last forward pass."""
    o, a = sim.outputs(), sim.get_inputs()
    if objective == "miss":
        return 0.5 * ((o["land_x"] - a["target_x"]) ** 2 + (o["land_z"] - a["target_z"]) ** 2)
    if objective == "range":
        dx = o["land_x"] - a["x0"]
        return np.hypot(dx, o["land_z"] - a["z0"]) if sim.dims == 3 else dx
    return o["land_t"]


@pytest.mark.parametrize("key", [(2, "semi_implicit_euler"), (3, "semi_implicit_euler"), (3, "rk4"),
                                 (2, "euler"), (2, "midpoint")])
def test_equals_central_differences(sims, key):
    """Every input perturbed for all cannons at once (cannons are independent, so each
    cannon's term gives its own derivative), central differences in float64; through
    bounces too (every key but the first)."""
    sim = sims[key]
    base = sim.get_inputs()
    for objective in OBJECTIVES:
        sim.forward(objective, strict=False)
        g = sim.backward()
        for name in INPUTS:
            h = 1e-6 * np.maximum(1e-3 if name == "drag" else 1.0, np.abs(base[name]))
            vals = []
            for sgn in (1, -1):
                sim.set_inputs(**{name: base[name] + sgn * h})
                sim.forward(objective, strict=False)
                vals.append(_terms(sim, objective))
            sim.set_inputs(**{name: base[name]})
            fd = (vals[0] - vals[1]) / (2 * h)
            if name == "restitution":   # e = 0 is the switch to no bounce: no derivative
                fd = np.where(base[name] > 0, fd, 0.0)
            np.testing.assert_allclose(g[name], fd, rtol=2e-6, atol=1e-6 * max(1.0, np.abs(fd).max()),
                                       err_msg=f"{key} d{objective}/d{name}")


@pytest.mark.parametrize("group, slots", [(2, 5), (3, 2)])
def test_group_and_slot_layouts_agree(sims, group, slots):
    """Cannons interleaved per group and spread over slots (9 cannons in 2 lanes and 5
    slots, the last group padded; in 3 lanes and 2 slots: two groups in one slot): the
    same numbers to round-off as the default layout of a small batch (1 lane, 9 slots)."""
    sim = sims[2, "semi_implicit_euler"]
    sim.forward("miss", strict=False)
    ref = sim.backward()
    default = sim.__dict__["_hand_reverse"]
    assert (default.G, default.NS) == (1, 9)
    R.use(sim, True, group=group, slots=slots)
    try:
        got = sim.backward()
    finally:
        sim.__dict__["_hand_reverse"] = default
    for n in INPUTS:
        np.testing.assert_allclose(got[n], ref[n], rtol=1e-13, atol=1e-13 * np.abs(ref[n]).max())


def test_impact_fraction_derivative_of_a_deflated_first_step(sims):
    """A launch from height 0 whose first step ends below ground (the deflated cubic's
    root, projectile.impact_fraction) and a launch going down from height 0 (s = 0).
    (Where the forward pass's 4 Newton iterations leave a residual, e.g. angle 1e-3 here:
    5e-11 in s, autodiff differentiates that iterate and the implicit function theorem
    the root; they then differ by ~1e-8 relative.)"""
    sim = sims[3, "semi_implicit_euler"]
    a = sim.get_inputs()
    try:
        sim.set_inputs(height=0.0, angle=np.array([1e-4, 3e-4, -0.2, 0.5, 2e-4, 0.8, 1.5e-4]),
                       restitution=0.0)
        sim.forward("flight_time", strict=False)
        assert (sim.outputs()["land_t"][[0, 1, 2, 4, 6]] <= DT).all()
        assert sim.outputs()["land_t"][2] == 0.0
        mine, ref = _both(sim, "flight_time")
        np.testing.assert_allclose(mine, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    finally:
        sim.set_inputs(**a)


def test_falls_back_to_taichi_autodiff_where_not_covered(sims, monkeypatch):
    """Turned off, or a buffer over the memory limit: Projectile.backward is Taichi's
    autodiff, and gives the same gradient."""
    sim = sims[2, "semi_implicit_euler"]
    sim.forward("range", strict=False)
    mine = sim.backward()
    R.use(sim, False)
    assert "turned off" in R.reason_not_used(sim) and R.backward(sim) is None
    R.use(sim, True)
    built = sim.__dict__.pop("_hand_reverse")
    try:
        monkeypatch.setenv("DIFFSIM_MAX_BYTES", "1000")
        assert R.backward(sim) is None and "too large" in R.reason_not_used(sim)
        ref = sim.backward()           # Taichi's autodiff
    finally:
        sim.__dict__["_hand_reverse"] = built
    scale = max(np.abs(ref[n]).max() for n in INPUTS)
    for n in INPUTS:
        np.testing.assert_allclose(mine[n], ref[n], rtol=1e-12, atol=1e-12 * scale)
