"""Step-size controllers as objects (diffsim.controllers): the registry, bad settings
refused, the PI controller meeting the requested tolerance on a closed form, its settings
reaching the stepping kernel, fixed-step Dopri5, gradients through the adaptive path
against central differences, and the [controller] scene section."""
import numpy as np
import pytest
from diffsim.backend import ti

from diffsim import controllers as C
from diffsim import scene as S
from diffsim.errors import DiffsimError, SceneError
from diffsim.ode import (CONTROLLERS, ODE, RK4, ConstantStep, Dopri5, PIController, make_controller,
                         solve)
from diffsim.ode.adaptive import adaptive_grid


@ti.func
def _osc(t, y, p):
    return ti.Vector([y[1], -p[0] * p[0] * y[0]])


OSC = ODE(_osc, 2, 1, name="ctl_osc")
W = 1.3
T = 8.0


def _exact(t):
    return np.array([np.cos(W * t), -W * np.sin(W * t)])


# -- the objects -----------------------------------------------------------------------
def test_registry_names_and_defaults():
    assert set(CONTROLLERS) == {"constant", "pi"}
    assert all(CONTROLLERS[k].name == k for k in CONTROLLERS)
    assert isinstance(make_controller("constant"), ConstantStep)
    pi = make_controller("pi", rtol=1e-7)
    assert pi == PIController(rtol=1e-7) and pi.adaptive and not ConstantStep().adaptive
    assert (pi.atol, pi.safety, pi.factor_min, pi.factor_max, pi.pcoeff, pi.icoeff, pi.h0,
            pi.max_steps) == (1e-9, 0.9, 0.2, 10.0, 0.0, 1.0, None, 100_000)
    assert pi.exponents(5) == (0.2, 0.0)
    assert PIController(pcoeff=0.2, icoeff=0.65).exponents(5) == pytest.approx((0.17, 0.04))
    # defaults: Dopri5 error-controlled, every fixed-step solver constant
    assert Dopri5().controller == PIController() and Dopri5().adaptive
    assert RK4().controller == ConstantStep() and not RK4().adaptive
    # the shorthand is that controller
    assert Dopri5(rtol=1e-8, max_steps=50).controller == PIController(rtol=1e-8, max_steps=50)
    assert pi.replace(rtol=1e-3) == PIController(rtol=1e-3)
    with pytest.raises(DiffsimError,
                       match="controller 'pid' is not known; use one of constant, pi"):
        make_controller("pid")


@pytest.mark.parametrize("kw, match", [
    (dict(rtol=0.0), "rtol must be > 0"), (dict(rtol=float("nan")), "rtol must be a number"),
    (dict(atol=-1e-9), "atol must be > 0"), (dict(safety=1.2), "safety must be <= 1"),
    (dict(factor_min=1.0), "factor_min must be < 1"),
    (dict(factor_max=1.0), "factor_max must be > 1"),
    (dict(pcoeff=-0.1), "pcoeff must be >= 0"), (dict(icoeff=0.0), "icoeff must be > 0"),
    (dict(h0=0.0), "h0 must be > 0"), (dict(max_steps=0), "max_steps must be >= 1"),
    (dict(max_steps=2.5), "max_steps must be an integer"),
    (dict(rtol="1e-6"), "rtol must be a number"),
    (dict(tol=1e-6), "has no setting 'tol'; its settings: rtol, atol"),
])
def test_bad_settings_are_refused_naming_them(kw, match):
    with pytest.raises(DiffsimError, match=match):
        PIController(**kw)
    if set(kw) <= {"rtol", "atol", "h0", "max_steps"}:       # the Dopri5 shorthand too
        with pytest.raises(DiffsimError, match=match):
            Dopri5(**kw)


def test_constant_has_no_settings_and_dopri5_refuses_mixed_arguments():
    with pytest.raises(DiffsimError,
                       match="ConstantStep has no setting 'rtol'; its settings: none"):
        ConstantStep(rtol=1e-6)
    with pytest.raises(DiffsimError, match="give rtol to the controller"):
        Dopri5(rtol=1e-6, controller=PIController())
    with pytest.raises(DiffsimError, match="controller must be a step-size controller"):
        Dopri5(controller="pi")


# -- the PI controller on a closed form --------------------------------------------------
@pytest.mark.parametrize("ctl", [dict(), dict(pcoeff=0.2, icoeff=0.65)], ids=["I", "PI"])
def test_pi_controller_reaches_the_requested_tolerance(ctl):
    # harmonic oscillator y = (cos ωt, -ω sin ωt): the global error at 21 save times stays
    # within a small multiple of the tolerance and falls with it
    ts = np.linspace(0, T, 21)
    errs, steps = {}, {}
    for rtol in (1e-6, 1e-9):
        s = solve(OSC, (0, T), [1, 0], [W], saveat=ts,
                  solver=Dopri5(controller=PIController(rtol=rtol, atol=rtol, **ctl)))
        errs[rtol] = np.abs(s.ys[0] - _exact(ts).T).max()
        steps[rtol] = s.steps
    # measured: I 3.8e-6 / 3.7e-9 (41 / 165 steps), PI 1.5e-6 / 2.5e-9 (61 / 182 steps)
    assert errs[1e-6] <= 20 * 1e-6 and errs[1e-9] <= 20 * 1e-9, errs
    assert errs[1e-9] <= errs[1e-6] / 300, errs
    assert steps[1e-9] > 2 * steps[1e-6]        # ∝ rtol^(-1/5): 1000^(1/5) ≈ 4


def test_settings_reach_the_stepping_kernel():
    def grid(**kw):
        return adaptive_grid(OSC, Dopri5(controller=PIController(rtol=1e-8, atol=1e-8, **kw)),
                             0.0, T, np.array([[1.0, 0.0]]), np.array([[W]]), None)[0]
    base = grid()
    # a smaller safety factor takes more steps; the PI term changes the step sequence
    assert len(grid(safety=0.5)) > 1.2 * len(base)
    pi = grid(pcoeff=0.2, icoeff=0.65)
    assert len(pi) != len(base) or not np.array_equal(pi, base)
    # growth is capped by factor_max (the last step lands on t1, it may be shorter)
    h = grid(h0=1e-6, factor_max=1.5)
    assert h[0] == 1e-6
    assert np.all(h[1:-1] / h[:-2] <= 1.5 * (1 + 1e-12)) and h[1:-1].max() > 1e-3
    # without the cap the same start grows tenfold in a step
    assert grid(h0=1e-6)[1] == pytest.approx(1e-5)


def test_constant_step_dopri5_is_a_fixed_step_fifth_order_method():
    # Dopri5(controller=ConstantStep()) takes solve(dt=...) steps: error ∝ dt⁵, smaller
    # than RK4's at the same dt
    errs = []
    for dt in (0.1, 0.05):
        s = solve(OSC, (0, T), [1, 0], [W], solver=Dopri5(controller=ConstantStep()), dt=dt)
        assert s.steps == round(T / dt)
        errs.append(np.abs(s.y_final[0] - _exact(T)).max())
    rk4 = np.abs(solve(OSC, (0, T), [1, 0], [W], solver=RK4(), dt=0.1).y_final[0] - _exact(T)).max()
    assert errs[0] < rk4 / 10
    assert 20 < errs[0] / errs[1] < 45         # 2⁵ = 32
    with pytest.raises(DiffsimError, match="dt must be a positive number"):
        solve(OSC, (0, T), [1, 0], [W], solver=Dopri5(controller=ConstantStep()))


# -- gradients through the adaptive path ------------------------------------------------
@pytest.mark.parametrize("solver", [Dopri5(controller=PIController(rtol=1e-7, atol=1e-9, pcoeff=0.2,
                                                                   icoeff=0.65, safety=0.8)),
                                    Dopri5(controller=ConstantStep())], ids=["PI", "constant"])
def test_gradients_match_central_differences(solver):
    # discrete and forward: exact for the accepted steps (held fixed, as fd does); the
    # continuous adjoint: to the tolerance (constant steps: RK4 backwards on the grid)
    ts = np.linspace(0, 4, 9)
    data = 0.9 * _exact(ts).T
    kw = dict(solver=solver, saveat=ts, data=data, dt=0.05)
    fd = solve(OSC, (0, 4), [1, 0], [W], gradient="fd", **kw)
    g_fd = np.concatenate([fd.grad_params[0], fd.grad_y0[0]])
    scale = np.abs(g_fd).max()
    for method, tol in (("discrete", 1e-7), ("forward", 1e-7), ("adjoint", 1e-5)):
        s = solve(OSC, (0, 4), [1, 0], [W], gradient=method, **kw)
        g = np.concatenate([s.grad_params[0], s.grad_y0[0]])
        assert np.abs(g - g_fd).max() <= tol * scale, (method, g, g_fd)


# -- the [controller] scene section ---------------------------------------------------
def _build(over):
    from diffsim.tasks.ode import make_scene_solver
    return make_scene_solver(S.load("lotka_volterra", over))


def test_scene_controller_section():
    assert repr(_build([])) == "RK4()"
    d = _build(['solve.solver="dopri5"'])
    assert d.controller == PIController(rtol=1e-8, atol=1e-10)          # the scene's defaults
    d = _build(['solve.solver="dopri5"', "controller.rtol=1e-6", "controller.pcoeff=0.2",
                "controller.icoeff=0.65", "controller.h0=0.01", "controller.max_steps=500"])
    assert d.controller == PIController(rtol=1e-6, atol=1e-10, pcoeff=0.2, icoeff=0.65,
                                        h0=0.01, max_steps=500)
    d = _build(['solve.solver="dopri5"', 'controller.name="constant"'])
    assert d.controller == ConstantStep() and not d.adaptive


@pytest.mark.parametrize("over, key, match", [
    (["solve.rtol=1e-6"], "solve.rtol", "was moved; use controller.rtol"),
    (["solve.atol=1e-9"], "solve.atol", "was moved; use controller.atol"),
    (['controller.name="pi"'], "controller.name", "needs a solver with an embedded error estimate"),
    (["controller.rtol=1e-6"], "controller.rtol", "not a setting of the 'constant' controller"),
    (['solve.solver="dopri5"', "controller.factor_max=0.5"], "controller.factor_max",
     "must be > 1"),
    (['solve.solver="dopri5"', 'controller.name="pid"'], "controller.name",
     "must be one of auto, constant, pi"),
])
def test_scene_errors_name_the_key(over, key, match):
    with pytest.raises(SceneError, match=match) as info:
        _build(over)
    assert key in str(info.value) and "lotka_volterra.toml" in str(info.value)


def test_every_shipped_ode_scene_still_loads():
    from diffsim.tasks.ode import make_scene_solver
    names = [n for n, p in S.bundled_scenes().items() if 'kind = "ode"' in p.read_text()]
    assert len(names) >= 5
    for n in names:
        assert make_scene_solver(S.load(n)).controller == ConstantStep()


def test_scene_schema_comes_from_the_registry():
    from diffsim.tasks.ode import SCHEMA
    keys = set(SCHEMA["controller"])
    assert keys == {"name"} | {o.name for cls in CONTROLLERS.values() for o in cls.options}
    assert SCHEMA["controller"]["name"].choices == ("auto", *CONTROLLERS)
    assert set(C.all_options()["rtol"][1]) == {"pi"}
