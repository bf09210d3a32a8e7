"""Explicit ODE solvers' gradients ("discrete", "forward", "adjoint") on Lotka–Volterra
against central differences, on whichever backend the process runs (listed in
tests/conftest.py GRADIENT_TESTS, so test_backends re-runs them on Quadrants, whose
reverse mode mis-differentiates a vector built from the loop's state:
docs/taichi-notes.md 33, docs/probes/quadrants_issue.md). Measured on both backends with
these settings (float64): discrete and forward 2e-10 from central differences; the
continuous adjoint's gap to the discrete gradient is the solver's truncation error (1e-2
Euler, 2e-4 midpoint, 1e-8 RK4 / Dopri5) and shrinks with the solver's order when dt
halves. A wrong reverse pass (Quadrants' bug: 0.4 % off in the parameter gradient) fails
the first check by 1e4 and a wrong backsolve breaks the second's ratio."""
import numpy as np
import pytest

from diffsim.ode import ConstantStep, Dopri5, Euler, Midpoint, RK4, solve
from diffsim.ode.systems import SYSTEMS
from diffsim.gradients import Adjoint

LV = SYSTEMS["lotka_volterra"]
P_LV = [1.5, 1.0, 3.0, 1.0]
SAVE, DATA = [0.2, 0.4], [[0.8, 1.1], [0.7, 1.2]]
SOLVERS = [(Euler(), 1), (Midpoint(), 2), (RK4(), 4), (Dopri5(controller=ConstantStep()), 5)]


def _grads(solver, gradient, dt=0.02, **kw):
    s = solve(LV, (0, 0.4), [1.0, 1.0], P_LV, solver=solver, dt=dt, saveat=SAVE, data=DATA,
              gradient=gradient, **kw)
    return np.concatenate([s.grad_params.ravel(), s.grad_y0.ravel()])


@pytest.mark.parametrize("solver,order", SOLVERS, ids=[type(s).__name__ for s, _ in SOLVERS])
def test_explicit_solver_gradients_match_central_differences(solver, order):
    fd = _grads(solver, "fd")
    assert np.abs(fd[:4]).max() > 0.05          # the parameter gradient is not ~0
    scale = np.abs(fd).max()
    disc = _grads(solver, "discrete")
    np.testing.assert_allclose(_grads(solver, "forward"), fd, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(disc, fd, rtol=0, atol=1e-8 * scale)
    # the continuous adjoint approximates the ODE's exact gradient: its gap to the discrete
    # one is O(dt^order) (Dopri5's step is RK5 in the discrete gradient, the adjoint's
    # backsolve RK4: ratio ≥ 2^4)
    gaps = []
    for dt in (0.02, 0.01):
        d = disc if dt == 0.02 else _grads(solver, "discrete", dt=dt)
        gaps.append(np.abs(_grads(solver, "adjoint", dt=dt, adjoint=Adjoint("backsolve")) - d).max()
                    / scale)
    assert gaps[0] < 0.05
    assert gaps[0] / gaps[1] > 0.75 * 2 ** min(order, 4), gaps
