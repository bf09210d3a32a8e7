"""ODE memory: bounded in the number of steps (no per-step grids), enormous horizons refused
before anything is allocated."""
import re
import tracemalloc

import numpy as np
import pytest

from diffsim import scene
from diffsim.errors import DiffsimError
from diffsim.ode import solve
from diffsim.ode.systems import SYSTEMS

LV = SYSTEMS["lotka_volterra"]


def _run(N):
    ts = np.linspace(0, 10.0, 11)
    return solve(LV, (0, 10.0), [1, 1], [1.5, 1, 3, 1], dt=10.0 / N, saveat=ts,
                 data=np.ones((11, 2)), gradient="discrete")


def test_discrete_gradient_memory_does_not_grow_with_steps():
    _run(1000)                       # compile outside the measurement
    peaks, grads = [], []
    for N in (50_000, 500_000):
        tracemalloc.start()
        s = _run(N)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        grads.append(s.grad_params[0])
    # before: ~60 B per step of numpy grids (30 MB at 5·10⁵ steps); now only the O(N/500)
    # checkpoints and segment list grow (the grid window is at most 65,536 steps)
    assert peaks[1] < 1.5 * peaks[0] and peaks[1] < 8e6, peaks
    # and the result is the same problem solved more finely (RK4 converged at 10⁵ steps)
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-8)


def test_enormous_horizon_is_refused_with_key_and_bytes():
    for over, big in (("solve.t1=1e150", "1e+152"), ("solve.dt=1e-300", "1e+301"),
                      ("solve.t1=1e308", "inf")):
        with pytest.raises(DiffsimError) as e:
            scene.load("lotka_volterra", [over])
        msg = str(e.value)
        assert "solve.dt" in msg and "solve.t1" in msg and "TiB" in msg and big in msg
        assert not re.search(r"\d{16}", msg), msg       # no 150-digit step counts
    with pytest.raises(DiffsimError, match=r"1e\+14 steps is more than"):
        solve(LV, (0, 1e12), [1, 1], [1.5, 1, 3, 1], dt=0.01)


@pytest.mark.parametrize("method, kind", [("discrete", None), ("forward", None),
                                          ("adjoint", "checkpointed"), ("adjoint", "backsolve")])
def test_windowed_step_grid_gives_the_same_results(method, kind, monkeypatch):
    # a grid longer than the resident window is uploaded window by window, forwards and
    # backwards; every method must see the same steps as with the whole grid resident
    from diffsim.ode import Adjoint
    from diffsim.ode import integration
    ts = np.linspace(0, 5.0, 26)
    kw = dict(saveat=ts, data=np.ones((26, 2)), gradient=method, max_fused=300,
              adjoint=Adjoint(kind) if kind else None)
    ref = solve(LV, (0, 5.0), [1, 1], [1.5, 1, 3, 1], dt=0.001, **kw)   # whole grid resident
    key = next(k for k in LV._cache if isinstance(k, tuple) and k[:5] == ("RK4", 1, 5000, 26, 300))
    assert LV._cache.pop(key).W_steps == 5000
    monkeypatch.setattr(integration, "WINDOW", 700)
    monkeypatch.setattr(integration, "TAPE_MAX", 300)
    win = solve(LV, (0, 5.0), [1, 1], [1.5, 1, 3, 1], dt=0.001, **kw)
    assert LV._cache.pop(key).W_steps == 700
    np.testing.assert_allclose(win.grad_params, ref.grad_params, rtol=1e-11)
    np.testing.assert_allclose(win.ys, ref.ys, rtol=1e-13)
