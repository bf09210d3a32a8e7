"""ODE integrators: measured convergence orders, symplectic energy behaviour."""
import numpy as np
import pytest

from diffsim.ode import Euler, Leapfrog, Midpoint, RK4, SemiImplicitEuler, solve
from diffsim.ode.systems import SYSTEMS

OSC = SYSTEMS["oscillator"]          # x'' = -ω² x - 2ζω x'


def _error(solver, dt, zeta=0.0, T=2.0):
    s = solve(OSC, (0.0, T), [1.0, 0.0], [1.0, zeta], solver=solver, dt=dt)
    return abs(s.y_final[0, 0] - np.cos(T))


@pytest.mark.parametrize("solver,order", [(Euler(), 1), (SemiImplicitEuler(), 1),
                                          (Midpoint(), 2), (Leapfrog(), 2), (RK4(), 4)])
def test_convergence_order(solver, order):
    dts = [0.02, 0.01, 0.005]
    errs = [_error(solver, dt) for dt in dts]
    slope = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.25, (solver, slope, errs)


def test_symplectic_energy_bounded_vs_euler_drift():
    ts = np.linspace(0, 50, 501)
    energy = {}
    for solver in (Euler(), SemiImplicitEuler(), Leapfrog()):
        ys = solve(OSC, (0, 50), [1.0, 0.0], [1.0, 0.0], solver=solver, dt=0.1, saveat=ts).ys[0]
        energy[solver.name] = 0.5 * (ys[:, 0] ** 2 + ys[:, 1] ** 2)
    assert energy["euler"][-1] > 10.0                      # explicit Euler: e^{T·dt} growth
    for name in ("semi_implicit_euler", "leapfrog"):
        assert np.max(np.abs(energy[name] - 0.5)) < 0.05, name


def test_bad_inputs_name_the_fix():
    from diffsim import DiffsimError
    with pytest.raises(DiffsimError, match="dt"):
        solve(OSC, (0, 1), [1, 0], [1, 0], dt=0.3)
    with pytest.raises(DiffsimError, match="not on the step grid"):
        solve(OSC, (0, 1), [1, 0], [1, 0], dt=0.1, saveat=[0.15])
    with pytest.raises(DiffsimError, match="second_order"):
        solve(SYSTEMS["lotka_volterra"], (0, 1), [1, 1], [1, 1, 1, 1], solver=Leapfrog(), dt=0.1)
