"""ODE gradients: discrete reverse mode vs central differences and closed forms."""
import numpy as np
import pytest
from diffsim.backend import ti

from diffsim.ode import ODE, Euler, Leapfrog, Midpoint, RK4, SemiImplicitEuler, solve
from diffsim.ode.systems import SYSTEMS

LV = SYSTEMS["lotka_volterra"]
OSC = SYSTEMS["oscillator"]


@pytest.mark.parametrize("solver", [Euler(), Midpoint()])  # RK4: see docs/ode.md (slow compile)
def test_discrete_matches_fd_lotka_volterra(solver):
    ts = np.linspace(0, 2, 21)
    data = solve(LV, (0, 2), [1, 1], [1.5, 1, 3, 1], dt=0.01, saveat=ts).ys[0]
    kw = dict(solver=solver, dt=0.01, saveat=ts, data=data)
    d = solve(LV, (0, 2), [1, 1], [1.2, 0.8, 2.8, 1.1], gradient="discrete", **kw)
    f = solve(LV, (0, 2), [1, 1], [1.2, 0.8, 2.8, 1.1], gradient="fd", **kw)
    np.testing.assert_allclose(d.grad_params, f.grad_params, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(d.grad_y0, f.grad_y0, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("solver", [SemiImplicitEuler(), Leapfrog()])
def test_discrete_matches_fd_symplectic(solver):
    kw = dict(solver=solver, dt=0.01, saveat=[1.0, 2.0], data=[[0.3, 0.1], [-0.2, 0.4]])
    d = solve(OSC, (0, 2), [1, 0.5], [2.0, 0.1], gradient="discrete", **kw)
    f = solve(OSC, (0, 2), [1, 0.5], [2.0, 0.1], gradient="fd", **kw)
    np.testing.assert_allclose(d.grad_params, f.grad_params, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(d.grad_y0, f.grad_y0, rtol=1e-6, atol=1e-8)


def test_oscillator_closed_form_initial_state_sensitivity():
    # L = x(T): dL/dx0 = cos ωT, dL/dv0 = sin ωT / ω (undamped, ω = 2)
    T, w = 1.3, 2.0
    s = solve(OSC, (0, T), [0.4, -0.2], [w, 0.0], dt=0.01, saveat=[T], data=[[0.0, 0.0]],
              weights=[[1.0, 0.0]], gradient="discrete")
    x = s.ys[0, 0, 0]                      # loss = x², so dL/d· = 2x · dx/d·
    np.testing.assert_allclose(s.grad_y0[0] / (2 * x), [np.cos(w * T), np.sin(w * T) / w], rtol=1e-7)


@ti.func
def _decay(t, y, p):
    return ti.Vector([-p[0] * y[0]])


@ti.func
def _final_u(y, p):
    return y[0]


DECAY = ODE(_decay, 1, 1, final=_final_u, name="decay")


def test_exponential_decay_closed_form():
    lam, T, u0 = 0.7, 2.0, 1.5
    s = solve(DECAY, (0, T), [u0], [lam], dt=0.01, gradient="discrete")
    np.testing.assert_allclose(s.loss, u0 * np.exp(-lam * T), rtol=1e-9)
    np.testing.assert_allclose(s.grad_params[0, 0], -T * u0 * np.exp(-lam * T), rtol=1e-8)


@ti.func
def _run_cost(t, y, p):
    return y[0] * y[0]


RUN = ODE(_decay, 1, 1, running=_run_cost, name="decay_running")


def test_running_cost_closed_form_and_fd():
    lam, T = 0.5, 2.0              # ∫ e^{-2λt} dt = (1 - e^{-2λT}) / (2λ)
    s = solve(RUN, (0, T), [1.0], [lam], dt=0.001, gradient="discrete")
    np.testing.assert_allclose(s.loss, (1 - np.exp(-2 * lam * T)) / (2 * lam), rtol=1e-6)
    f = solve(RUN, (0, T), [1.0], [lam], dt=0.001, gradient="fd")
    np.testing.assert_allclose(s.grad_params, f.grad_params, rtol=1e-6)


def test_batch_members_are_independent():
    P = np.array([[1.5, 1, 3, 1], [1.2, 0.8, 2.8, 1.1]])
    kw = dict(solver=Midpoint(), dt=0.01, saveat=[1.0], data=[[1.0, 1.0]], gradient="discrete")
    both = solve(LV, (0, 1), [1, 1], P, **kw)
    one = solve(LV, (0, 1), [1, 1], P[1], **kw)
    np.testing.assert_allclose(both.grad_params[1], one.grad_params[0], rtol=1e-12)


def test_checkpoint_memory_bound_counts_stored_states():
    # 1,000,000 steps: K = 2000 segments -> 2001 stored states, not 10^6.
    s = solve(DECAY, (0, 1000.0), [1.0], [0.001], dt=0.001, gradient="discrete")
    assert s.steps == 1_000_000
    assert s.stored_states == 2001
    np.testing.assert_allclose(s.grad_params[0, 0], -1000 * np.exp(-1.0), rtol=1e-6)
    # a smaller max_fused stores more states: K = N / max_fused
    s2 = solve(DECAY, (0, 1.0), [1.0], [0.5], dt=0.001, gradient="discrete", max_fused=100)
    assert s2.stored_states == 11
