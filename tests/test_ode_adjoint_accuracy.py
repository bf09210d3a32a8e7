"""The continuous adjoint of Dopri5 reaches the accuracy its solver was asked for (issue #8):
against the exact gradient of the ODE objective (forward sensitivity equations integrated
by scipy's DOP853 at rtol 1e-13), against closed forms with running/final costs and y0(p),
and the error control itself (it refines, and it refuses when it cannot)."""
import numpy as np
import pytest
from diffsim.backend import ti
from scipy.integrate import solve_ivp

from diffsim.errors import SimulationError
from diffsim.ode import ODE, Adjoint, Dopri5, solve
from diffsim.ode import gradients as G
from diffsim.ode.systems import SYSTEMS

LV = SYSTEMS["lotka_volterra"]
P_LV = np.array([1.2, 0.8, 2.8, 1.1])
T = 10.0
TS = np.linspace(0, T, 101)


def _benchmark_module():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "ode.py"
    spec = importlib.util.spec_from_file_location("_ode_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: dL/d(p, y0) of Lotka–Volterra from the forward sensitivity equations (DOP853, rtol
#: 1e-13): one reference, shared with benchmarks/ode.py's accuracy table
lv_exact_gradient = _benchmark_module().lv_exact_gradient


@pytest.fixture(scope="module")
def lv():
    data = solve(LV, (0, T), [1, 1], [1.5, 1, 3, 1], dt=0.001, saveat=TS).ys[0]
    return data, lv_exact_gradient(P_LV, [1.0, 1.0], TS, data)


def _rel_err(s, ref, b=0):
    g = np.concatenate([s.grad_params[b], s.grad_y0[b]])
    return np.abs(g - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("kind", ["checkpointed", "backsolve"])
def test_lv_adjoint_error_meets_the_bound_and_shrinks_with_rtol(lv, kind):
    data, ref = lv
    errs = {}
    for rtol in (1e-6, 1e-8):
        s = solve(LV, (0, T), [1, 1], P_LV, solver=Dopri5(rtol=rtol, atol=rtol / 100), saveat=TS,
                  data=data, gradient="adjoint", adjoint=Adjoint(kind))
        errs[rtol] = _rel_err(s, ref)
        assert s.stats["adjoint_steps"] >= s.steps and s.stats["adjoint_passes"] >= 1
    # measured: checkpointed 8.0e-6 → 9.1e-8, backsolve 7.6e-7 → 3.0e-8 (the old RK4
    # backward pass: 3.8e-4 → 4.0e-6 and 2.2e-4 → 2.2e-5)
    assert errs[1e-8] <= 1e-6, errs
    assert errs[1e-8] <= errs[1e-6] / 20, errs


def test_lv_adjoint_batch_and_segments(lv):
    # two members on one shared grid, several checkpoint segments (max_fused), both kinds:
    # each member within the bound of its own exact gradient
    data, ref0 = lv
    p2 = np.array([1.4, 0.9, 3.1, 1.0])
    ref1 = lv_exact_gradient(p2, [1.0, 1.0], TS, data)
    for kind in ("checkpointed", "backsolve"):
        s = solve(LV, (0, T), [1, 1], np.stack([P_LV, p2]), solver=Dopri5(rtol=1e-8, atol=1e-10),
                  saveat=TS, data=data, gradient="adjoint", adjoint=Adjoint(kind), max_fused=60)
        assert s.segments > 2
        assert _rel_err(s, ref0, 0) <= 1e-6 and _rel_err(s, ref1, 1) <= 1e-6, kind


@ti.func
def _decay(t, y, p):
    return ti.Vector([-p[0] * y[0]])


@ti.func
def _decay_y0(p):
    return ti.Vector([p[1]])


@ti.func
def _square(t, y, p):
    return y[0] * y[0]


@ti.func
def _final_square(y, p):
    return y[0] * y[0]


DECAY = ODE(_decay, 1, 2, y0=_decay_y0, running=_square, final=_final_square, name="decay_rf")


@pytest.mark.parametrize("kind", ["checkpointed", "backsolve"])
def test_running_and_final_cost_with_parametric_y0_closed_form(kind):
    # y = p1·exp(-p0 t);  L = ∫_0^T y² dt + y(T)²  (the continuous objective; the reported
    # loss integrates the running cost by the trapezoid rule on the steps)
    k, u0, TT = 0.7, 1.5, 2.0
    E = np.exp(-2 * k * TT)
    dk = u0 ** 2 * (TT * E / k - (1 - E) / (2 * k ** 2) - 2 * TT * E)
    du0 = 2 * u0 * ((1 - E) / (2 * k) + E)
    s = solve(DECAY, (0, TT), None, [k, u0], solver=Dopri5(rtol=1e-9, atol=1e-12),
              gradient="adjoint", adjoint=Adjoint(kind))
    np.testing.assert_allclose(s.grad_params[0], [dk, du0], rtol=1e-7)
    assert np.all(s.grad_y0 == 0)


@ti.func
def _forced(t, y, p):
    return ti.Vector([y[1], -p[0] * y[0] - p[1] * y[1] + p[2] * ti.sin(2.0 * t)])


FORCED = ODE(_forced, 2, 3, name="forced_damped")


def forced_exact_gradient(p, y0, ts, data):
    """Exact dL/d(p, y0) for FORCED with L = Σ_j |y(t_j) - d_j|² (sensitivities, DOP853)."""
    def rhs(t, z):
        y, S = z[:2], z[2:].reshape(2, 5)
        J = np.array([[0.0, 1.0], [-p[0], -p[1]]])
        dS = J @ S
        dS[1, :3] += [-y[0], -y[1], np.sin(2 * t)]
        return np.concatenate([[y[1], -p[0] * y[0] - p[1] * y[1] + p[2] * np.sin(2 * t)], dS.ravel()])
    z0 = np.concatenate([y0, np.hstack([np.zeros((2, 3)), np.eye(2)]).ravel()])
    s = solve_ivp(rhs, (ts[0], ts[-1]), z0, method="DOP853", rtol=1e-13, atol=1e-15, t_eval=ts)
    r = 2 * (s.y[:2].T - data)
    return np.einsum("jc,jcq->q", r, s.y[2:].T.reshape(-1, 2, 5))


@pytest.mark.parametrize("kind", ["checkpointed", "backsolve"])
def test_time_dependent_rhs_matches_exact(kind):
    # the stage times of the backward steps matter when f depends on t
    ts = np.linspace(0, 6, 31)
    data = np.cos(ts)[:, None] * np.array([1.0, -0.5])
    p = [2.0, 0.3, 0.8]
    ref = forced_exact_gradient(p, [1.0, 0.0], ts, data)
    errs = []
    for rtol in (1e-6, 1e-9):
        s = solve(FORCED, (0, 6), [1, 0], p, solver=Dopri5(rtol=rtol, atol=rtol / 100),
                  saveat=ts, data=data, gradient="adjoint", adjoint=Adjoint(kind))
        errs.append(_rel_err(s, ref))
    assert errs[1] <= 1e-7 and errs[1] <= errs[0] / 100, errs


def test_dense_output_coefficients_are_scipys_rk45():
    from scipy.integrate._ivp.rk import RK45
    np.testing.assert_allclose(G.DOPRI5_DENSE, RK45.P, rtol=1e-15, atol=0)
    # θ = 1 gives the step's 5th-order weights
    np.testing.assert_allclose(G.DOPRI5_DENSE.sum(axis=1), Dopri5.b, rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("kind", ["checkpointed", "backsolve"])
def test_small_chunks_give_the_same_gradient(lv, monkeypatch, kind):
    # memory bound: the backward pass works on chunks of forward steps, and a chunk whose
    # steps are split past ADJOINT_CHUNK_SUBSTEPS shrinks; the gradient must not change
    # beyond the tolerance's reach
    data, ref = lv
    kw = dict(solver=Dopri5(rtol=1e-8, atol=1e-10), saveat=TS, data=data, gradient="adjoint",
              adjoint=Adjoint(kind))
    whole = solve(LV, (0, T), [1, 1], P_LV, **kw)
    monkeypatch.setattr(G, "ADJOINT_CHUNK", 40)
    monkeypatch.setattr(G, "ADJOINT_CHUNK_SUBSTEPS", 50)
    trace = []
    small = solve(LV, (0, T), [1, 1], P_LV, adjoint_trace=trace, **kw)
    assert len(trace) > 218 // 40                    # chunks, some of them shrunk
    assert _rel_err(small, ref) <= 1e-6
    g0, g1 = (np.concatenate([x.grad_params[0], x.grad_y0[0]]) for x in (whole, small))
    assert np.abs(g1 - g0).max() <= 1e-7 * np.abs(g0).max()
    # the λ trace covers [t0, t1] in order (chunk ends meet to rounding: t_i + h_i vs t_{i+1})
    ts = np.concatenate([t for t, _ in reversed(trace)])
    assert ts[0] == 0.0 and ts[-1] == T and np.all(np.diff(ts) >= -1e-12)
    assert all(lam.shape == (len(t), 1, 2) for t, lam in trace)


def test_error_control_refines_and_refuses_when_it_cannot(lv, monkeypatch):
    data, _ = lv
    kw = dict(solver=Dopri5(rtol=1e-8, atol=1e-10), saveat=TS, data=data, gradient="adjoint")
    s = solve(LV, (0, T), [1, 1], P_LV, **kw)
    # on LV some accepted forward steps are too long for the adjoint: they get split
    assert s.stats["adjoint_steps"] > s.steps and s.stats["adjoint_passes"] >= 2
    monkeypatch.setattr(G, "ADJOINT_MAX_PASSES", 1)
    with pytest.raises(SimulationError, match="did not reach rtol=1e-08"):
        solve(LV, (0, T), [1, 1], P_LV, **kw)
