"""Backward Euler tape (diffsim.ode.implicit): accuracy, stability, batches, failures."""
import numpy as np
import pytest
from diffsim.backend import ti
from scipy.optimize import fsolve

from diffsim.errors import DiffsimError, SimulationError
from diffsim.ode import ODE, BackwardEuler
from diffsim.ode import implicit
from diffsim.ode.implicit import implicit_tape
from diffsim.ode.systems import SYSTEMS

LV = SYSTEMS["lotka_volterra"]
LV_P = np.array([1.5, 1.0, 3.0, 1.0])


@ti.func
def _decay(t, y, p):
    return ti.Vector([-p[0] * y[0]])


DECAY = ODE(_decay, 1, 1, name="decay")


@ti.func
def _square(t, y, p):          # y' = p y²: backward Euler has no real solution when 4 h p y > 1
    return ti.Vector([p[0] * y[0] * y[0]])


SQUARE = ODE(_square, 1, 1, name="square")

#: a 5-state linear system with forcing (n > UNROLL_MAX_STATE: the runtime-loop path)
_A5 = (np.diag([-1.0, -2.0, -3.0, -4.0, -50.0]) + 0.3 * np.eye(5, k=1) - 0.2 * np.eye(5, k=-1)
       + 0.1 * np.eye(5, k=3))
_A5L = _A5.tolist()


@ti.func
def _linear5(t, y, p):
    return ti.Vector([p[0] * ti.sin(t) + sum([_A5L[i][j] * y[j] for j in ti.static(range(5))])
                      for i in ti.static(range(5))])


LINEAR5 = ODE(_linear5, 5, 1, name="linear5")


def grid(dt, N, t0=0.0):
    return np.full(N, dt), t0 + dt * np.arange(N)


def be_reference(f, jac, h, t, y0):
    """Backward Euler by scipy.optimize.fsolve per step."""
    ys = [np.asarray(y0, dtype=np.float64)]
    for hk, tk in zip(h, t):
        y = ys[-1]
        z0 = y + hk * f(tk, y)
        z = fsolve(lambda z: z - y - hk * f(tk + hk, z), z0,
                   fprime=lambda z: np.eye(len(y)) - hk * jac(tk + hk, z), xtol=1e-14)
        ys.append(z)
    return np.array(ys)


def lv_f(p):
    a, b, c, d = p
    return lambda t, y: np.array([a * y[0] - b * y[0] * y[1], d * y[0] * y[1] - c * y[1]])


def lv_jac(p):
    a, b, c, d = p
    return lambda t, y: np.array([[a - b * y[1], -b * y[0]], [d * y[1], d * y[0] - c]])


def test_first_order_convergence_on_decay():
    lam, T, u0 = 1.0, 1.0, 1.0
    errs = []
    for N in (8, 16, 32, 64):
        h, t = grid(T / N, N)
        tape = implicit_tape(DECAY, BackwardEuler(), h, t, [[u0]], [[lam]])
        assert tape.shape == (N + 1, 1, 1) and tape.dtype == np.float64
        assert tape[0, 0, 0] == u0
        # the discrete solution is known exactly: u_N = u0 / (1 + λh)^N
        np.testing.assert_allclose(tape[-1, 0, 0], u0 / (1 + lam * T / N) ** N, rtol=1e-12)
        errs.append(abs(tape[-1, 0, 0] - u0 * np.exp(-lam * T)))
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all((ratios > 1.85) & (ratios < 2.15)), ratios     # error halves with dt


def test_stiff_decay_is_stable():
    lam, dt, N = 1e4, 0.1, 10
    h, t = grid(dt, N)
    y = implicit_tape(DECAY, BackwardEuler(), h, t, [[1.0]], [[lam]])[:, 0, 0]
    assert abs(1 - lam * dt) > 1      # explicit Euler's amplification factor: it would blow up
    assert np.all(np.isfinite(y)) and np.all(np.diff(np.abs(y)) < 0) and np.all(y > 0)
    # Newton stops on |Δz| ≤ tol·max(1, |z|): an absolute 1e-12 once |y| < 1
    np.testing.assert_allclose(y, (1 + lam * dt) ** -np.arange(N + 1.0), rtol=1e-12, atol=1e-14)


def test_lotka_volterra_matches_fsolve_reference():
    h, t = grid(0.01, 100)
    tape = implicit_tape(LV, BackwardEuler(), h, t, [1.0, 1.0], LV_P)
    ref = be_reference(lv_f(LV_P), lv_jac(LV_P), h, t, [1.0, 1.0])
    assert tape.shape == (101, 1, 2)
    np.testing.assert_allclose(tape[:, 0], ref, rtol=0, atol=1e-10)
    # every step solves the backward Euler equations: max |R| small
    f = lv_f(LV_P)
    R = [tape[k + 1, 0] - tape[k, 0] - h[k] * f(t[k] + h[k], tape[k + 1, 0]) for k in range(100)]
    assert np.max(np.abs(R)) < 1e-12


def test_batch_of_two_members():
    h, t = grid(0.01, 100)
    p2 = np.array([LV_P, [1.0, 0.5, 2.0, 0.8]])
    y2 = np.array([[1.0, 1.0], [2.0, 0.5]])
    tape = implicit_tape(LV, BackwardEuler(), h, t, y2, p2)
    assert tape.shape == (101, 2, 2)
    np.testing.assert_array_equal(tape[0], y2)
    single = implicit_tape(LV, BackwardEuler(), h, t, y2[0], p2[0])
    np.testing.assert_allclose(tape[:, 0], single[:, 0], rtol=0, atol=1e-13)
    ref = be_reference(lv_f(p2[1]), lv_jac(p2[1]), h, t, y2[1])
    np.testing.assert_allclose(tape[:, 1], ref, rtol=0, atol=1e-10)
    # a single y0 row is broadcast over a batch of parameters
    tb = implicit_tape(LV, BackwardEuler(), h, t, [1.0, 1.0], p2)
    np.testing.assert_allclose(tb[:, 0], single[:, 0], rtol=0, atol=1e-13)


def test_parallel_batch_matches_closed_form():
    B = implicit.PARALLEL_MIN_BATCH          # the batch loop runs in parallel from here
    lam = np.linspace(0.1, 50.0, B)
    u0 = np.linspace(1.0, 2.0, B)
    h, t = grid(0.05, 20)
    tape = implicit_tape(DECAY, BackwardEuler(), h, t, u0[:, None], lam[:, None])
    exact = u0[None, :] / (1 + lam[None, :] * 0.05) ** np.arange(21.0)[:, None]
    np.testing.assert_allclose(tape[:, :, 0], exact, rtol=1e-11, atol=1e-13)


def test_linear_system_above_unroll_limit():
    assert LINEAR5.n > implicit.UNROLL_MAX_STATE
    h, t = grid(0.05, 40, t0=0.3)
    y0 = np.array([[1.0, -0.5, 0.3, 2.0, 1.0]])
    tape = implicit_tape(LINEAR5, BackwardEuler(), h, t, y0, [[0.7]])
    M = np.eye(5) - 0.05 * _A5
    ref = [y0[0]]
    for k in range(40):
        ref.append(np.linalg.solve(M, ref[-1] + 0.05 * 0.7 * np.sin(t[k] + 0.05)))
    np.testing.assert_allclose(tape[:, 0], np.array(ref), rtol=0, atol=1e-12)


def test_newton_not_converging_raises():
    h, t = grid(0.01, 100)
    with pytest.raises(SimulationError, match=r"t = 0 .*batch member 0 .*did not converge in 1 "
                                              r"iteration .*smaller dt"):
        implicit_tape(LV, BackwardEuler(tol=1e-300, max_newton=1), h, t, [1.0, 1.0], LV_P)


def test_no_solution_names_step_time_and_member():
    # y' = y²: member 0 (y0 = 0.1) is fine, member 1 (y0 = 1, 4·h·y = 2 > 1) has no
    # backward Euler step at all
    h, t = grid(0.5, 4, t0=2.0)
    with pytest.raises(SimulationError, match=r"square at step 0 \(t = 2 .*batch member 1 "):
        implicit_tape(SQUARE, BackwardEuler(), h, t, [[0.1], [1.0]], [[1.0], [1.0]])
    ok = implicit_tape(SQUARE, BackwardEuler(), h, t, [[0.1], [0.1]], [[1.0], [1.0]])
    z = ok[1, 0, 0]
    np.testing.assert_allclose(z, 0.1 + 0.5 * z * z, rtol=1e-13)


def test_fields_are_cached_per_batch_and_capacity():
    h, t = grid(0.01, 90)
    before = {k for k in LV._cache if k[0] == implicit._CACHE_TAG}
    implicit_tape(LV, BackwardEuler(), h, t, [1.0, 1.0], LV_P)
    implicit_tape(LV, BackwardEuler(), h[:70], t[:70], [1.0, 1.0], LV_P)
    keys = {k for k in LV._cache if k[0] == implicit._CACHE_TAG}
    assert len(keys - before) <= 1                 # 70 and 90 steps share capacity 128
    from diffsim import runtime
    assert all(k[-1] == runtime.current().generation for k in keys)


def test_bad_inputs():
    h, t = grid(0.01, 5)
    with pytest.raises(DiffsimError, match="y0 must have shape"):
        implicit_tape(LV, BackwardEuler(), h, t, [1.0, 1.0, 1.0], LV_P)
    with pytest.raises(DiffsimError, match="h and t"):
        implicit_tape(LV, BackwardEuler(), h, t[:3], [1.0, 1.0], LV_P)
    with pytest.raises(DiffsimError, match="positive"):
        implicit_tape(LV, BackwardEuler(), -h, t, [1.0, 1.0], LV_P)
    with pytest.raises(DiffsimError, match="max_newton"):
        implicit_tape(LV, BackwardEuler(max_newton=0), h, t, [1.0, 1.0], LV_P)
    assert implicit_tape(LV, BackwardEuler(), [], [], [1.0, 2.0], LV_P).shape == (1, 1, 2)
