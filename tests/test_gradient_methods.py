"""Gradient methods as objects (diffsim.gradients); forward mode for the cannon and
mass-spring and the cannon's continuous adjoint, each against central finite differences
in float64 (the adjoint also against FD of an independent DOP853 solve of the exact ODE)."""
import math

import numpy as np
import pytest

import diffsim
from diffsim import Adjoint, Discrete, FiniteDifferences, Forward, gradcheck
from diffsim.cli import main
from diffsim.errors import DiffsimError
from diffsim.gradients import METHOD_NAMES, resolve
from diffsim.problem import Param, Parameters, Problem
from diffsim.systems import projectile_adjoint
from diffsim.systems.mass_spring import MassSpring
from diffsim.systems.projectile import INPUTS, Projectile
from test_mass_spring import fd as ms_fd
from test_mass_spring_options import CASES, falling_square
from test_projectile import fd_grad

G = 9.81


# -- the registry and Problem.value_and_grad ----------------------------------------
class Cubic(Problem):
    """f(a, b) = a³ + a·b: gradient (3a² + b, a)."""

    name = "cubic"
    methods = ("discrete", "fd")

    def __init__(self):
        self.params = Parameters([Param("a", 1.0), Param("b", 2.0)])
        self.seen = []

    def _objective(self, x):
        return x[0] ** 3 + x[0] * x[1]

    def _value_and_grad(self, x, method):
        self.seen.append(method)
        return self._objective(x), np.array([3 * x[0] ** 2 + x[1], x[0]])


def test_registry_resolves_names_and_objects_and_refuses_the_rest():
    assert METHOD_NAMES == ("discrete", "adjoint", "forward", "fd")
    assert isinstance(resolve("forward"), Forward) and resolve("adjoint").kind is None
    a = Adjoint(kind="backsolve")
    assert resolve(a) is a and a == "adjoint" and str(a) == "adjoint" and a != Adjoint()
    assert diffsim.ode.Adjoint is Adjoint     # one class, importable from both places
    for bad in ("bogus", 3, None, "Adjoint"):
        with pytest.raises(DiffsimError, match="not a gradient method"):
            resolve(bad)
    with pytest.raises(DiffsimError, match="kind='bogus'"):
        Adjoint("bogus")
    for bad in (0, -1e-6, 1.0, float("nan"), "1e-6", True):
        with pytest.raises(DiffsimError, match="FiniteDifferences"):
            FiniteDifferences(step=bad)


def test_value_and_grad_takes_names_or_objects():
    pb = Cubic()
    x = np.array([1.0, 2.0])
    for m in ("discrete", Discrete(), None):
        assert pb.value_and_grad(x, m)[1].tolist() == [5.0, 1.0]
    assert all(isinstance(m, Discrete) for m in pb.seen)
    # the step of a FiniteDifferences object is used: central differences of a³ carry a
    # truncation error h²·a (h = 1e-2 here: 1e-4), the default step's is ~1e-12
    assert abs(pb.value_and_grad(x, FiniteDifferences(step=1e-2))[1][0] - 5.0 - 1e-4) < 1e-9
    assert abs(pb.value_and_grad(x, "fd")[1][0] - 5.0) < 1e-7
    for m in ("forward", Adjoint()):
        with pytest.raises(DiffsimError, match="not available for cubic"):
            pb.value_and_grad(x, m)


# -- exact projectile physics (scipy DOP853, event location), for the adjoint ---------
def exact_objective(v, objective, bounces):
    """Objective of one cannon of the exact ODE: inputs ``v`` (name -> float), 3D."""
    from scipy.integrate import solve_ivp
    g, k, w = v["gravity"], v["drag"], np.array([v["wind_x"], 0.0, v["wind_z"]])

    def rhs(t, s):
        r = s[3:] - w
        return np.concatenate([s[3:], -k * np.linalg.norm(r) * r - [0.0, g, 0.0]])

    def ground(t, s):
        return s[1]
    ground.terminal, ground.direction = True, -1
    sp, el, az = v["speed"], v["angle"], v["azimuth"]
    s = np.array([v["x0"], v["height"], v["z0"], sp * math.cos(el) * math.cos(az),
                  sp * math.sin(el), sp * math.cos(el) * math.sin(az)])
    t = 0.0
    for j in range(bounces + 1):
        # a bounce starts on the ground going up: step off it before looking for the event
        sol = solve_ivp(rhs, (t, t + 100), s, method="DOP853", rtol=1e-13, atol=1e-13,
                        events=ground)
        t, s = sol.t_events[0][0], sol.y_events[0][0].copy()
        s[1] = 0.0
        s[4] = -v["restitution"] * s[4]
    if objective == "miss":
        return 0.5 * ((s[0] - v["target_x"]) ** 2 + (s[2] - v["target_z"]) ** 2)
    if objective == "range":
        return math.hypot(s[0] - v["x0"], s[2] - v["z0"])
    return t


@pytest.fixture(scope="module")
def cannons():
    """Three 3D cannons with drag, wind and two bounces each, RK4, 2 segments."""
    sim = Projectile(3, steps=700, dt=0.01, dims=3, bounces=2)
    sim.set_inputs(speed=[22.0, 18.0, 25.0], angle=[0.6, 0.9, 0.4], azimuth=[0.1, -0.3, 0.5],
                   height=[0.0, 2.0, 1.0], drag=[0.002, 0.004, 0.001], wind_x=[2.0, -3.0, 1.0],
                   wind_z=[0.5, 1.0, -1.0], restitution=[0.5, 0.4, 0.6], gravity=G,
                   target_x=[30.0, 20.0, 40.0], target_z=[2.0, -4.0, 9.0])
    return sim


NAMES = ("speed", "angle", "azimuth", "height", "gravity", "drag", "wind_x", "wind_z",
         "restitution", "x0", "target_x")


@pytest.mark.parametrize("objective", ["miss", "range", "flight_time"])
def test_cannon_forward_mode_equals_reverse_mode_and_central_differences(cannons, objective):
    f_t, gt = cannons.forward_tangent(NAMES, objective)
    f = cannons.forward(objective)          # a plain pass after the tangent sweeps
    assert (cannons.outputs()["bounces"] == 2).all() and cannons.outputs()["landed"].all()
    g = cannons.backward()
    assert abs(f_t - f) <= 1e-13 * abs(f)       # separately compiled: equal to rounding
    for name in NAMES:
        np.testing.assert_allclose(gt[name], g[name], rtol=1e-9, atol=1e-11, err_msg=name)
    for name in ("speed", "angle", "azimuth", "drag", "restitution"):
        np.testing.assert_allclose(gt[name], fd_grad(cannons, name, objective), rtol=1e-6,
                                   atol=1e-7, err_msg=name)
        assert np.all(gt[name] != 0.0), name


def test_cannon_semi_implicit_euler_forward_and_adjoint_with_a_cannon_still_flying():
    """Cannon 0 is still flying at the 1.5 s horizon (its objective is its mid-air
    position), cannon 1 bounces once and lands. Forward mode matches central FD; the
    Euler adjoint converges to the discrete gradient at first order."""
    sim = Projectile(2, steps=150, dt=0.01, integrator="semi_implicit_euler", bounces=1)
    sim.set_inputs(speed=[20.0, 8.0], angle=[0.7, 0.5], drag=0.003, wind_x=1.5,
                   restitution=0.5, gravity=G, target_x=[25.0, 5.0])
    names = ("speed", "angle", "gravity", "drag", "wind_x", "restitution")
    _, gt = sim.forward_tangent(names, "miss")
    o = sim.outputs()
    assert o["landed"].tolist() == [False, True] and o["bounces"][1] == 1
    for name in names:
        base = sim.get_inputs()[name].copy()
        for b in range(2):
            h = 1e-6 * max(abs(base[b]), 1e-3 if name == "drag" else 1.0)
            vals = []
            for sgn in (1, -1):
                v = base.copy()
                v[b] += sgn * h
                sim.set_inputs(**{name: v})
                vals.append(sim.forward("miss", strict=False))
            sim.set_inputs(**{name: base})
            fd = (vals[0] - vals[1]) / (2 * h)
            assert abs(gt[name][b] - fd) <= 1e-6 * abs(fd) + 1e-7, (name, b, gt[name][b], fd)
    d = []
    for factor in (1, 2, 4):
        _, ga = projectile_adjoint.continuous_adjoint(sim, "miss", factor=factor)
        _, gt = sim.forward_tangent(names, "miss", factor=factor)
        d.append(np.array([abs(ga[n] - gt[n]) / abs(gt[n]) for n in ("angle", "gravity")]).max())
    assert d[2] < d[1] < d[0] < 0.05 and d[0] / d[2] > 2.5, d      # first order: 4 expected


@pytest.mark.parametrize("objective", ["miss", "flight_time"])
def test_cannon_adjoint_against_the_exact_ode_and_the_discrete_gradient(cannons, objective):
    """Adjoint at dt = 0.01 vs central FD of a DOP853 solve (tol 1e-13) of the same ODE
    with exact event location: they differ by the adjoint's discretisation error only.
    The discrete gradient is within that error of it too."""
    _, ga = projectile_adjoint.continuous_adjoint(cannons, objective)
    cannons.forward(objective)
    gd = cannons.backward()
    base = {n: a[0] for n, a in cannons.get_inputs().items()}
    for name in ("speed", "angle", "azimuth", "height", "gravity", "drag", "wind_x", "wind_z",
                 "restitution"):
        h = 1e-5 * max(abs(base[name]), 1e-3 if name == "drag" else 1.0)
        vals = []
        for sgn in (1, -1):
            v = dict(base)
            v[name] += sgn * h
            vals.append(exact_objective(v, objective, bounces=2))
        fd = (vals[0] - vals[1]) / (2 * h)
        assert abs(ga[name][0] - fd) <= 1e-5 * abs(fd) + 1e-7, (name, ga[name][0], fd)
        assert abs(ga[name][0] - gd[name][0]) <= 1e-5 * abs(gd[name][0]) + 1e-7, name
    assert np.all(ga["restitution"] != 0)


def test_cannon_adjoint_without_bounces_against_the_exact_ode():
    """The adjoint needs no reverse-mode kernel (recorded states, closed-form Jacobians),
    so it runs on every backend: 2D cannons with drag and wind, landing event only, vs
    central FD of a DOP853 solve with exact event location."""
    sim = Projectile(2, steps=500, dt=0.01)
    sim.set_inputs(speed=[20.0, 26.0], angle=[0.7, 0.35], height=[0.0, 1.5], drag=[0.003, 0.001],
                   wind_x=[-2.0, 3.0], gravity=G, target_x=[30.0, 45.0])
    _, ga = projectile_adjoint.continuous_adjoint(sim, "miss")
    for b in range(2):
        base = {n: a[b] for n, a in sim.get_inputs().items()}
        for name in ("speed", "angle", "height", "gravity", "drag", "wind_x"):
            h = 1e-5 * max(abs(base[name]), 1e-3 if name == "drag" else 1.0)
            vals = []
            for sgn in (1, -1):
                v = dict(base)
                v[name] += sgn * h
                vals.append(exact_objective(v, "miss", bounces=0))
            fd = (vals[0] - vals[1]) / (2 * h)
            assert abs(ga[name][b] - fd) <= 1e-5 * abs(fd) + 1e-7, (b, name, ga[name][b], fd)


def test_cannon_adjoint_converges_at_the_integrators_order(cannons):
    """|adjoint − discrete| shrinks with dt like the method's order (events included):
    halving dt shrinks it ≥ 4× (order ≥ 2 seen; RK4 with bounces is third order)."""
    d = []
    for factor in (1, 2):
        _, ga = projectile_adjoint.continuous_adjoint(cannons, "miss", factor=factor)
        _, gt = cannons.forward_tangent(("angle", "drag"), "miss", factor=factor)
        d.append(max(abs(ga[n] - gt[n]).max() / abs(gt[n]).max() for n in ("angle", "drag")))
    assert 0 < d[1] < d[0] / 4, d


def test_cannon_adjoint_check_passes_and_a_wrong_adjoint_fails(monkeypatch):
    pb = diffsim.build("cannon_bounce", ["sim.dt=0.01"])
    names = ["angle", "drag", "restitution"]
    rep = gradcheck(pb, method=Adjoint(), names=names)
    assert rep.ok and rep.method == "adjoint", rep
    err = pb.gradient_error(pb.x0(), Adjoint())
    g = pb.gradient(method="forward")
    assert np.all(err <= 1e-6 * np.abs(g) + 1e-9)       # the allowance is tight
    right = projectile_adjoint.continuous_adjoint

    def wrong(*a, **kw):   # 1e-4 relative off: far beyond the discretisation error
        f, gin = right(*a, **kw)
        return f, {n: v * (1 + 1e-4) for n, v in gin.items()}
    monkeypatch.setattr(projectile_adjoint, "continuous_adjoint", wrong)
    assert not gradcheck(pb, method="adjoint", names=names).ok
    with pytest.raises(DiffsimError, match="backsolve"):
        pb.value_and_grad(None, Adjoint("backsolve"))


@pytest.mark.slow    # two scene builds (~10 s); the paths are covered by the tests above
def test_cli_grad_forward_and_check_adjoint_exit_0(capsys):
    assert main(["grad", "cannon", "--method", "forward"]) == 0
    assert "method: forward" in capsys.readouterr().out
    assert main(["check", "cannon_bounce", "--method", "adjoint"]) == 0
    assert "all pass" in capsys.readouterr().out


def test_cli_unknown_method_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["grad", "cannon", "--method", "bogus"])
    assert e.value.code == 2


# -- mass-spring forward mode -----------------------------------------------------------
@pytest.mark.parametrize("case", ["neural-height-bounce", "sequence-target-sticky"])
def test_mass_spring_forward_mode_matches_central_differences(case):
    ctrl, objective, phys = CASES[case]
    sim = MassSpring(falling_square(), steps=40, dt=0.004, gravity=-9.8, controller=ctrl,
                     hidden=3, sines=2, pieces=4, omega=9.0, **phys)
    sim.init_controller(2)
    sim.set_target(point=[0.3, 0.05], area=0.012)
    entries = [("stiffness", (0, 2), 1e-3), ("damping", (0, 1), 1e-6), ("rest", (0, 4), 1e-7),
               ("mass", (0, 1), 1e-7), ("vx0", (0, 0), 1e-7), ("y0", (0, 3), 1e-7),
               ("actuation", (0, 0), 1e-7)]
    entries += {"sequence": [("seq", (0, 0, 0), 1e-7)], "sine": [("phase", (0, 0), 1e-7)],
                "neural": [("w1", (0, 1, 3), 1e-6), ("b2", (0, 0), 1e-6)]}[ctrl]
    f, gt = sim.forward_tangent(objective, [(n, i) for n, i, _ in entries])
    y = sim.trajectory()[0, :, :, 1]
    assert y.min() >= -1e-12 and y.min() < 1e-3            # the ground was touched
    for (name, idx, h), got in zip(entries, gt):
        want = ms_fd(sim, objective, name, idx, h)
        assert abs(got - want) <= 1e-10 + 1e-5 * abs(want) and want != 0.0, (name, idx, got, want)
    if ctrl == "sequence":   # and equals reverse mode to round-off
        sim.forward(objective)
        g = sim.backward()
        for (name, idx, _), got in zip(entries, gt):
            assert abs(got - g[name][idx]) <= 1e-10 * abs(g[name][idx]) + 1e-14, name


def test_mass_spring_problem_forward_and_its_limit():
    pb = diffsim.build("spring_triangle", ["sim.steps=200"])
    f1, g1 = pb.value_and_grad(None, Forward())
    f2, g2 = pb.value_and_grad(None, "fd")
    assert abs(f1 - f2) <= 1e-13 * abs(f2) and np.all(g1 != 0)
    np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-12)
    robot = diffsim.build("robot_a", ["sim.steps=10"])          # ~1,500 controller weights
    with pytest.raises(DiffsimError, match="one tangent simulation per parameter"):
        robot.value_and_grad(None, "forward")
    with pytest.raises(DiffsimError, match="not available"):
        robot.value_and_grad(None, "adjoint")


def test_an_adjoint_kind_passed_as_the_method_overrides_the_scene():
    # the name "adjoint" means the scene's `adjoint` key; Adjoint(kind) chooses explicitly
    pb = diffsim.build("lotka_volterra")
    assert pb.adjoint.kind == "checkpointed"
    x = pb.x0()
    g_c = pb._solve(x, gradient="adjoint", data=pb.data).grad_params[0].copy()
    pb.adjoint = Adjoint("backsolve")
    g_b = pb._solve(x, gradient="adjoint", data=pb.data).grad_params[0].copy()
    pb.adjoint = Adjoint("checkpointed")
    assert not np.array_equal(g_b, g_c)          # the two kinds differ in round-off at least
    np.testing.assert_array_equal(pb.value_and_grad(x, Adjoint("backsolve"))[1], g_b)
    np.testing.assert_array_equal(pb.value_and_grad(x, "adjoint")[1], g_c)
    np.testing.assert_array_equal(pb.value_and_grad(x, Adjoint())[1], g_c)
