"""Adaptive Dormand–Prince step grids (diffsim.ode.adaptive): accuracy against closed
forms, exact save times, reproduction by the fixed-step 5th-order step, shared batch
grids, failures."""
import numpy as np
import pytest
from diffsim.backend import ti

from diffsim.errors import DiffsimError, SimulationError
from diffsim.ode import Dopri5, ODE
from diffsim.ode.adaptive import AdaptiveStepper, adaptive_grid
from diffsim.ode.systems import SYSTEMS

OSC = SYSTEMS["oscillator"]          # x'' = -ω² x - 2ζω x', params (omega, zeta)


@ti.func
def _forced_decay(t, y, p):          # y' = -a y + b cos t (non-autonomous), p = (a, b)
    return ti.Vector([-p[0] * y[0] + p[1] * ti.cos(t)])


@ti.func
def _blow_up(t, y, p):               # y' = y²: y = 1/(1 - t) from y(0) = 1
    return ti.Vector([p[0] * y[0] * y[0]])


@ti.func
def _root(t, y, p):                  # y' = -sqrt(y): y = (1 - t/2)², NaN for y < 0
    return ti.Vector([-p[0] * ti.sqrt(y[0])])


@ti.func
def _y0_from_p(p):                   # initial state as a function of the parameters
    return ti.Vector([2.0 * p[1]])


DECAY = ODE(_forced_decay, 1, 2, name="forced_decay")
DECAY_Y0 = ODE(_forced_decay, 1, 2, y0=_y0_from_p, name="forced_decay_y0")
BLOW = ODE(_blow_up, 1, 1, name="blow_up")
ROOT = ODE(_root, 1, 1, name="root")


def _decay_exact(t, a, b, y0):
    s = b / (a * a + 1.0)
    return (y0 - a * s) * np.exp(-a * t) + s * (a * np.cos(t) + np.sin(t))


def _osc_exact(t, omega, zeta, x0=1.0, v0=0.0):
    wd = omega * np.sqrt(1.0 - zeta ** 2)
    d = np.exp(-zeta * omega * t)
    x = d * (x0 * np.cos(wd * t) + (v0 + zeta * omega * x0) / wd * np.sin(wd * t))
    v = d * (v0 * np.cos(wd * t) - (omega ** 2 * x0 + zeta * omega * v0) / wd * np.sin(wd * t))
    return np.stack([x, v], axis=-1)


def _osc_rhs(y, p):                   # numpy twin of the bundled oscillator, batched
    return np.stack([y[:, 1], -p[:, 0] * p[:, 0] * y[:, 0] - 2.0 * p[:, 1] * p[:, 0] * y[:, 1]], 1)


def _np_dopri(rhs, h, t, y0, p, errors=False, rtol=None, atol=None):
    """Fixed-step Dopri5 on the grid (5th-order weights b), summed in the same order as
    solvers._comb; with errors=True also each member's embedded error norm per step."""
    S = Dopri5
    y = np.array(y0, dtype=np.float64)
    states, errs = [y.copy()], []
    for hk in h:
        ks = [rhs(y, p)]
        for i in range(1, 7):
            idx = [j for j, cj in enumerate(S.a[i]) if cj != 0.0]
            ks.append(rhs(y + hk * sum([S.a[i][j] * ks[j] for j in idx]), p))
        yn = y + hk * sum([S.b[j] * ks[j] for j in range(7) if S.b[j] != 0.0])
        if errors:
            e = hk * sum([S.e[j] * ks[j] for j in range(7) if S.e[j] != 0.0])
            sc = atol + rtol * np.maximum(np.abs(y), np.abs(yn))
            errs.append(np.sqrt(np.mean((e / sc) ** 2, axis=1)))
        y = yn
        states.append(y.copy())
    return np.array(states), np.array(errs)


def _check_grid(h, t, obs, obs0, ts, t0, t1):
    """Structure shared with fixed_grid: contiguous steps, every save time reached by the
    end of exactly one step, the next step starting on it bit for bit, the last on t1."""
    assert h.dtype == np.float64 and t.dtype == np.float64 and obs.dtype == np.int32
    assert len(h) == len(t) == len(obs) >= 1 and np.all(h > 0)
    assert t[0] == t0
    hit = obs >= 0
    expect = [j for j in range(len(ts)) if j != obs0]
    assert obs[hit].tolist() == expect
    ends = t + h                                             # numpy (IEEE) additions
    targets = np.where(hit, ts[np.maximum(obs, 0)], ends)
    targets[-1] = t1
    # the next step starts on the target, or at t + h exactly after a free step
    assert np.array_equal(t[1:], targets[:-1])
    # landing steps: h = target - t, so t + h is the target or, in round-to-even ties
    # where no float64 h reaches it, one ulp off
    assert np.all(np.abs(ends - targets) <= np.spacing(np.abs(targets)))
    return int(np.sum(ends != targets))


def test_oscillator_error_shrinks_with_tolerance_and_saves_are_exact():
    omega, zeta, T = 2.0, 0.1, 10.0
    ts = np.linspace(0.0, T, 21)           # includes t0: obs0 = 0
    errs, steps = [], []
    for rtol in (1e-5, 1e-7, 1e-9):
        sol = Dopri5(rtol=rtol, atol=rtol)
        h, t, obs, obs0, ts_out = adaptive_grid(OSC, sol, 0.0, T, np.array([[1.0, 0.0]]),
                                                np.array([[omega, zeta]]), ts)
        assert obs0 == 0 and np.array_equal(ts_out, ts)
        assert _check_grid(h, t, obs, obs0, ts, 0.0, T) == 0     # here t + h hits them all
        ys = AdaptiveStepper.get(OSC, sol, 1).ys[0]       # (J, n) states at ts
        err = np.max(np.abs(ys - _osc_exact(ts, omega, zeta)))
        assert err < 10 * rtol, (rtol, err)
        errs.append(err)
        steps.append(len(h))
    assert errs[0] > errs[1] > errs[2]
    assert steps[0] < steps[1] < steps[2]
    # 5th order: 100x tighter tolerance costs about 100^(1/5) = 2.5x the steps
    assert 1.5 < steps[2] / steps[1] < 4.0, steps


def test_save_times_far_apart_are_step_boundaries():
    """From t to a target more than twice t, fl(t + fl(target - t)) can miss the target by
    an ulp (a round-to-even tie no float64 step avoids). Save times are picked so that
    many consecutive pairs are such cases, on a constant solution (one step each): the
    grid still starts each next step on the target itself."""
    rng = np.random.default_rng(3)
    ts, misses = [1e-3], 0
    while len(ts) < 30:
        for _ in range(200):
            q = ts[-1] * rng.uniform(2.05, 2.6)
            if ts[-1] + (q - ts[-1]) != q:
                break
        misses += ts[-1] + (q - ts[-1]) != q
        ts.append(q)
    ts = np.array(ts)
    grid = adaptive_grid(DECAY, Dopri5(), 0.0, ts[-1], [1.0], [0.0, 0.0], ts)   # y' = 0
    off = _check_grid(*grid, 0.0, ts[-1])
    assert np.sum(np.isin(grid[1], ts)) >= 20       # steps from one target to the next
    assert misses >= 5 and off >= 5                 # the tie cases did occur


def test_grid_rerun_with_fixed_step_dopri5_reproduces_the_states():
    """The propagated solution is the 5th-order one: the fixed-step Dopri5 step (solvers'
    make_step, in Taichi) on the returned grid gives the same states."""
    a, b, y0, T = 3.0, 2.0, 0.5, 6.0
    ts = np.array([0.7, 2.0, 2.05, 5.0, T])
    sol = Dopri5(rtol=1e-8, atol=1e-10)
    h, t, obs, obs0, _ = adaptive_grid(DECAY, sol, 0.0, T, [[y0]], [[a, b]], ts)
    _check_grid(h, t, obs, obs0, ts, 0.0, T)
    ys = AdaptiveStepper.get(DECAY, sol, 1).ys[0, :, 0]
    assert np.max(np.abs(ys - _decay_exact(ts, a, b, y0))) < 1e-7

    step = Dopri5().make_step(DECAY)

    @ti.kernel
    def rerun(h: ti.types.ndarray(), t: ti.types.ndarray(), obs: ti.types.ndarray(),
              N: ti.i32, y0: ti.f64, a: ti.f64, b: ti.f64, out: ti.types.ndarray()):
        ti.loop_config(serialize=True)
        for _ in range(1):
            y = ti.Vector([y0])
            for k in range(N):
                y = step(t[k], y, ti.Vector([a, b]), h[k])
                if obs[k] >= 0:
                    out[obs[k]] = y[0]

    out = np.zeros(len(ts))
    rerun(h, t, obs, len(h), y0, a, b, out)
    assert np.array_equal(out, ys)            # same arithmetic: identical to the last bit


def test_oscillator_rerun_in_numpy_matches_states():
    sol = Dopri5(rtol=1e-6, atol=1e-8)
    ts = np.array([1.0, 2.5, 4.0])
    y0, p = np.array([[0.3, -1.0]]), np.array([[3.0, 0.05]])
    h, t, obs, obs0, _ = adaptive_grid(OSC, sol, 0.0, 4.0, y0, p, ts)
    states, errs = _np_dopri(_osc_rhs, h, t, y0, p, errors=True, rtol=sol.rtol, atol=sol.atol)
    st = AdaptiveStepper.get(OSC, sol, 1)
    np.testing.assert_allclose(states[1:][obs >= 0][:, 0], st.ys[0], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(states[-1], st.y_final, rtol=1e-13, atol=1e-14)
    assert np.max(errs) <= 1.0 + 1e-9                      # every accepted step passed
    assert st.stats["accepted"] == len(h) and st.stats["attempts"] >= len(h)


def test_batch_shares_one_grid_that_satisfies_every_member():
    T, tol = 5.0, 1e-7
    p = np.array([[1.0, 0.0], [6.0, 0.2]])                  # slow and fast member
    y0 = np.array([[1.0, 0.0], [1.0, 0.0]])
    ts = np.linspace(1.0, T, 5)
    sol = Dopri5(rtol=tol, atol=tol)
    h, t, obs, obs0, _ = adaptive_grid(OSC, sol, 0.0, T, y0, p, ts)
    _check_grid(h, t, obs, obs0, ts, 0.0, T)
    ys = AdaptiveStepper.get(OSC, sol, 2).ys
    for bb in range(2):
        exact = _osc_exact(ts, *p[bb])
        assert np.max(np.abs(ys[bb] - exact)) < 10 * tol * np.max(np.abs(exact)), bb
    _, errs = _np_dopri(_osc_rhs, h, t, y0, p, errors=True, rtol=tol, atol=tol)
    assert errs.shape == (len(h), 2) and np.max(errs) <= 1.0 + 1e-9
    # the fast member drives the grid: as many steps as it needs alone, more than the slow one
    n_alone = [len(adaptive_grid(OSC, sol, 0.0, T, y0[bb], p[bb], ts)[0]) for bb in range(2)]
    assert n_alone[0] < n_alone[1] <= len(h)
    # broadcasting a single y0 over the parameter batch gives the same grid
    h2 = adaptive_grid(OSC, sol, 0.0, T, y0[0], p, ts)[0]
    assert np.array_equal(h2, h)


def test_first_step_and_default_save_time():
    sol = Dopri5(rtol=1e-6, atol=1e-9, h0=0.01)
    h, t, obs, obs0, ts = adaptive_grid(DECAY, sol, 1.0, 3.0, [1.0], [2.0, 1.0], None)
    assert h[0] == 0.01 and obs0 == -1 and ts.tolist() == [3.0]
    assert obs.tolist() == [-1] * (len(h) - 1) + [0] and _check_grid(h, t, obs, obs0, ts, 1.0, 3.0) == 0
    # Hairer's heuristic starts near the step the controller settles on, not at 1e-6
    h, *_ = adaptive_grid(DECAY, Dopri5(rtol=1e-6, atol=1e-9), 1.0, 3.0, [1.0], [2.0, 1.0], None)
    assert 1e-3 < h[0] < 0.5


def test_initial_state_from_params():
    sol = Dopri5(rtol=1e-9, atol=1e-9)
    p = np.array([[1.5, 0.5], [0.7, -1.0]])
    adaptive_grid(DECAY_Y0, sol, 0.0, 4.0, None, p, [1.0, 4.0])
    ys = AdaptiveStepper.get(DECAY_Y0, sol, 2).ys[:, :, 0]
    for bb in range(2):
        exact = _decay_exact(np.array([1.0, 4.0]), p[bb, 0], p[bb, 1], 2.0 * p[bb, 1])
        np.testing.assert_allclose(ys[bb], exact, rtol=0, atol=1e-8)


def test_max_steps_failure_names_the_limit_and_the_fixes():
    with pytest.raises(SimulationError, match="max_steps=20") as info:
        adaptive_grid(OSC, Dopri5(rtol=1e-8, max_steps=20), 0.0, 50.0, [1.0, 0.0], [2.0, 0.0], None)
    msg = str(info.value)
    assert "t = " in msg and "rtol" in msg and "BackwardEuler" in msg


def _time_in(msg):
    import re
    return float(re.search(r"at t = ([-+0-9.e]+) of", msg).group(1))


def test_singular_solution_raises_with_the_time_reached():
    # y' = y² from 1 is singular at t = 1: the step size underflows there
    with pytest.raises(SimulationError, match="underflow") as info:
        adaptive_grid(BLOW, Dopri5(), 0.0, 2.0, [1.0], [1.0], None)
    assert abs(_time_in(str(info.value)) - 1.0) < 1e-3
    # y' = -sqrt(y) from 1 reaches 0 at t = 2; past it the stages are NaN
    with pytest.raises(SimulationError, match="NaN") as info:
        adaptive_grid(ROOT, Dopri5(), 0.0, 3.0, [1.0], [1.0], None)
    assert abs(_time_in(str(info.value)) - 2.0) < 1e-3
    # NaN from the start (sqrt of -1): fails at t0 after shrinking the step, no hang
    with pytest.raises(SimulationError, match="NaN") as info:
        adaptive_grid(ROOT, Dopri5(), 0.5, 3.0, [-1.0], [1.0], None)
    assert _time_in(str(info.value)) == 0.5


def test_bad_inputs():
    sol = Dopri5()
    with pytest.raises(DiffsimError, match="outside"):
        adaptive_grid(OSC, sol, 0.0, 1.0, [1, 0], [1, 0], [0.5, 1.5])
    with pytest.raises(DiffsimError, match="increasing"):
        adaptive_grid(OSC, sol, 0.0, 1.0, [1, 0], [1, 0], [0.5, 0.5])
    with pytest.raises(DiffsimError, match="t1 > t0"):
        adaptive_grid(OSC, sol, 1.0, 1.0, [1, 0], [1, 0], None)
    with pytest.raises(DiffsimError, match="y0"):
        adaptive_grid(OSC, sol, 0.0, 1.0, [1, 0, 0], [1, 0], None)
    with pytest.raises(DiffsimError, match="Dopri5"):
        from diffsim.ode import RK4
        adaptive_grid(OSC, RK4(), 0.0, 1.0, [1, 0], [1, 0], None)
