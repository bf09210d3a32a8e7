"""The one solve entry point: integrate, evaluate the loss, differentiate it.

    sol = solve(ode, (0.0, 10.0), y0, params, solver=RK4(), dt=0.01,
                saveat=times, data=obs, gradient="discrete")
    sol.ys          # (B, J, n) states at the save times
    sol.loss        # Σ_b [ Σ_j Σ_i w_bji (y_bi(t_j) - d_bji)² + ∫ g dt + φ(y(t1)) ]
    sol.grad_params # (B, m) dL/dp;  sol.grad_y0: (B, n) dL/dy0

Gradient methods (``gradient=``): "discrete" (reverse mode through the steps with
segment checkpointing), "adjoint" (continuous adjoint; not implemented yet),
"forward" (forward-mode sensitivities, one pass per parameter), "fd" (central
differences), or None (loss only).
"""
import dataclasses
import math

import numpy as np

from .. import runtime
from ..errors import DiffsimError, SimulationError
from .solvers import RK4, Solver

METHODS = ("discrete", "adjoint", "forward", "fd")


@dataclasses.dataclass
class Solution:
    """Result of :func:`solve`. Shapes: B batch, J save points, n states, m params."""

    ts: np.ndarray              # (J,) save times
    ys: np.ndarray              # (B, J, n) states at ts
    y_final: np.ndarray         # (B, n) state at t1
    loss: float                 # total loss (sum over the batch)
    grad_params: np.ndarray | None = None   # (B, m) dL/dp
    grad_y0: np.ndarray | None = None       # (B, n) dL/dy0 (zeros when y0 is a function of p)
    method: str | None = None
    steps: int = 0              # time steps taken (accepted steps for adaptive solvers)
    segments: int = 0           # fused launches per sweep
    stored_states: int = 0      # checkpoint states kept per batch member (K + 1)
    stats: dict = dataclasses.field(default_factory=dict)


def _as_batch(a, width, what, B=None):
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != width or (B is not None and a.shape[0] not in (1, B)):
        raise DiffsimError(f"{what} must have shape ({width},) or (B, {width}), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise DiffsimError(f"{what} contains NaN or inf: {a.tolist()}")
    return a


def fixed_grid(t0, t1, dt, saveat):
    """Uniform steps from t0 to t1 (dt rounded so that N·dt = t1 - t0); returns
    (h (N,), t (N,), obs (N,), obs0, ts). Save times must lie on the grid."""
    if not (dt is not None and math.isfinite(dt) and dt > 0):
        raise DiffsimError(f"dt must be a positive number of time units for a fixed-step "
                           f"solver, got dt={dt!r}")
    N = max(1, int(round((t1 - t0) / dt)))
    if abs(N * dt - (t1 - t0)) > 1e-6 * max(abs(t1 - t0), dt):
        raise DiffsimError(f"dt={dt} does not divide the interval [{t0}, {t1}] into whole "
                           f"steps; pick dt = (t1 - t0)/N")
    h = (t1 - t0) / N
    ts = np.array([t1] if saveat is None else saveat, dtype=np.float64)
    idx = (ts - t0) / h
    ridx = np.round(idx).astype(int)
    bad = np.nonzero((np.abs(idx - ridx) > 1e-6) | (ridx < 0) | (ridx > N))[0]
    if len(bad):
        raise DiffsimError(f"save/observation time {ts[bad[0]]} is not on the step grid "
                           f"t0 + k·dt (dt={h}) inside [{t0}, {t1}]; choose dt dividing the "
                           f"observation spacing")
    if np.any(np.diff(ridx) <= 0):
        raise DiffsimError("saveat times must be strictly increasing")
    obs = -np.ones(N, dtype=np.int32)
    obs0 = -1
    for j, r in enumerate(ridx):
        if r == 0:
            obs0 = j
        else:
            obs[r - 1] = j
    return np.full(N, h), t0 + h * np.arange(N), obs, obs0, ts


def _integration(ode, solver, B, N, J, max_fused):
    from .integration import Integration
    gen = runtime.current().generation
    key = (type(solver).__name__, B, N, J, max_fused, gen)
    it = ode._cache.get(key)
    if it is None:
        it = Integration(ode, solver, B, N, J, max_fused)
        ode._cache[key] = it
    return it


def solve(ode, t_span, y0=None, params=None, *, solver: Solver | None = None, dt=None,
          saveat=None, data=None, weights=None, gradient=None, adjoint=None,
          max_fused=None) -> Solution:
    """Integrate dy/dt = f(t, y, p) over t_span = (t0, t1) for a batch of B members.

    y0: (n,) or (B, n) initial states (ignored when the ODE has a y0(p) function).
    params: (m,) or (B, m). solver: RK4() by default. dt: fixed step (time units).
    saveat: (J,) increasing save/observation times on the step grid (default [t1]).
    data: (J, n) or (B, J, n) observations at saveat; weights: same shape (default 1
    where data is given). The loss is Σ w (y - data)² + ∫ running + final (ODE hooks).
    gradient: None, "discrete", "adjoint", "forward" or "fd". adjoint: reserved for the
    continuous-adjoint options (gradient="adjoint" is refused in this version).
    max_fused: most steps per launch (default runtime.MAX_FUSED_STEPS) = checkpoint
    spacing for "discrete".
    """
    solver = solver or RK4()
    t0, t1 = (float(v) for v in t_span)
    if not t1 > t0:
        raise DiffsimError(f"t_span must be (t0, t1) with t1 > t0, got {t_span!r}")
    if params is None:
        raise DiffsimError("params is required: an array of shape (n_params,) or (B, n_params)")
    params = _as_batch(params, ode.m, "params")
    B = params.shape[0]
    if y0 is None:
        if ode.y0 is None:
            raise DiffsimError(f"{ode.name} has no y0(p) function; pass y0 of shape ({ode.n},) or (B, {ode.n})")
        y0 = np.zeros((B, ode.n))
    y0 = _as_batch(y0, ode.n, "y0")
    B = max(B, y0.shape[0])
    if params.shape[0] not in (1, B) or y0.shape[0] not in (1, B):
        raise DiffsimError(f"params {params.shape} and y0 {y0.shape} disagree on the batch size")
    params = np.broadcast_to(params, (B, ode.m)).copy()
    y0 = np.broadcast_to(y0, (B, ode.n)).copy()
    if gradient not in (None, *METHODS):
        raise DiffsimError(f"gradient={gradient!r} is not known; use None or one of {', '.join(METHODS)}")
    if solver.implicit or solver.adaptive:
        raise DiffsimError(f"solver {solver!r} is declared but not implemented in this version; "
                           "use RK4(), Midpoint(), Euler(), SemiImplicitEuler() or Leapfrog()")
    if gradient in ("adjoint", "forward"):
        raise DiffsimError(f"gradient={gradient!r} is not implemented in this version; use "
                           "'discrete' (exact reverse mode) or 'fd'")
    h, t, obs, obs0, ts = fixed_grid(t0, t1, dt, saveat)
    J = len(ts)
    d, w = _data(data, weights, B, J, ode.n)
    cap = len(h)
    if solver.adaptive:
        cap = solver.max_steps
    it = _integration(ode, solver, B, cap, J, max_fused)
    it.set_grid(h, t, obs, obs0)
    it.set_data(d, w)
    return run(it, ts, params, y0, gradient)


def _data(data, weights, B, J, n):
    if data is None:
        return np.zeros((B, J, n)), np.zeros((B, J, n)) if weights is None else weights
    d = np.asarray(data, dtype=np.float64)
    try:
        d = np.broadcast_to(d, (B, J, n))
        w = np.broadcast_to(np.ones(1) if weights is None else np.asarray(weights, dtype=np.float64), (B, J, n))
    except ValueError:
        raise DiffsimError(f"data must have shape ({J}, {n}) or ({B}, {J}, {n}) to match saveat "
                           f"and the state, got {np.shape(data)} (weights {np.shape(weights)})") from None
    w = np.where(np.isfinite(d), w, 0.0)      # NaN data = unobserved
    return np.nan_to_num(d), w


def run(it, ts, params, y0, gradient) -> Solution:
    """Run a prepared Integration at (params, y0) with a gradient method."""
    it.set_inputs(params, y0)
    loss = it.forward()
    if not math.isfinite(loss):
        raise SimulationError(f"the solution blew up (loss = {loss}) at params {params.tolist()}: "
                              "lower dt, use an adaptive or implicit solver, or check the parameters")
    sol = Solution(ts=ts, ys=it.saved(), y_final=it.final_state(), loss=loss, method=gradient,
                   steps=it.n_steps, segments=len(it.segs), stored_states=len(it.segs) + 1)
    if gradient == "discrete":
        sol.grad_params, sol.grad_y0 = it.backward()
    elif gradient == "fd":
        sol.grad_params, sol.grad_y0 = _fd(it, params, y0)
    return sol


def _fd(it, params, y0, rel=1e-6):
    """Central differences of each member's loss, step rel·max(|x|, 1) per entry."""
    B, m, n = params.shape[0], params.shape[1], y0.shape[1]
    gp, gy = np.zeros((B, m)), np.zeros((B, n))
    cols = [("p", j) for j in range(m)] + ([] if it.ode.y0 is not None else [("y", c) for c in range(n)])
    for kind, j in cols:
        base = params if kind == "p" else y0
        hstep = rel * np.maximum(np.abs(base[:, j]), 1.0)
        vals = []
        for sgn in (1.0, -1.0):
            x = base.copy()
            x[:, j] += sgn * hstep
            it.set_inputs(x, y0) if kind == "p" else it.set_inputs(params, x)
            it.forward()
            vals.append(it.member_losses())
        g = (vals[0] - vals[1]) / (2 * hstep)
        if kind == "p":
            gp[:, j] = g
        else:
            gy[:, j] = g
    it.set_inputs(params, y0)
    it.forward()
    return gp, gy
