"""The one solve entry point: integrate, evaluate the loss, differentiate it.

    sol = solve(ode, (0.0, 10.0), y0, params, solver=RK4(), dt=0.01,
                saveat=times, data=obs, gradient="discrete")
    sol.ys          # (B, J, n) states at the save times
    sol.loss        # Σ_b [ Σ_j Σ_i w_bji (y_bi(t_j) - d_bji)² + ∫ g dt + φ(y(t1)) ]
    sol.grad_params # (B, m) dL/dp;  sol.grad_y0: (B, n) dL/dy0

Gradient methods (``gradient=``), all returning the same quantities: "discrete"
(reverse mode through the solver's steps, exact for the discretised problem), "adjoint"
(continuous adjoint, ``adjoint=Adjoint("checkpointed" | "backsolve")``), "forward"
(forward sensitivities; also gives dy(t_j)/dp), "fd" (central differences, for
checking), or None (loss only). See :mod:`diffsim.ode.gradients` for how each works.
"""
import dataclasses
import math

import numpy as np

from .. import runtime
from ..errors import DiffsimError, SimulationError
from .gradients import Adjoint, Grid, continuous_adjoint, discrete_adjoint, forward_sensitivities, jacobians
from .solvers import RK4, Solver, quiet_trace, state_as_list
from .steps import StepGrid

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
    #: (B, J, n, m + n) dy(t_j)/d(params, y0) (gradient="forward" only)
    sensitivities: np.ndarray | None = None


def _as_batch(a, width, what, B=None):
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != width or (B is not None and a.shape[0] not in (1, B)):
        raise DiffsimError(f"{what} must have shape ({width},) or (B, {width}), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise DiffsimError(f"{what} contains NaN or inf: {a.tolist()}")
    return a


def fixed_grid(t0, t1, dt, saveat) -> StepGrid:
    """Uniform steps from t0 to t1 (dt rounded so that N·dt = t1 - t0) as a
    :class:`StepGrid` generated on demand (no per-step arrays). Save times must lie on
    the grid."""
    if not (dt is not None and math.isfinite(dt) and dt > 0):
        raise DiffsimError(f"dt must be a positive number of time units for a fixed-step "
                           f"solver, got dt={dt!r}")
    n = (t1 - t0) / dt
    if not n <= MAX_STEPS:
        raise DiffsimError(f"(t1 - t0)/dt = ({t1:g} - {t0:g})/{dt:g} = {n:.3g} steps is more "
                           f"than the {MAX_STEPS:.0e} a fixed-step solve may take; raise dt or "
                           "shorten [t0, t1]")
    N = max(1, int(round(n)))
    if abs(N * dt - (t1 - t0)) > 1e-6 * max(abs(t1 - t0), dt):
        raise DiffsimError(f"dt={dt} does not divide the interval [{t0}, {t1}] into whole "
                           f"steps; pick dt = (t1 - t0)/N")
    h = (t1 - t0) / N
    ts = np.array([t1] if saveat is None else saveat, dtype=np.float64)
    idx = (ts - t0) / h
    ridx = np.round(idx).astype(np.int64)
    bad = np.nonzero((np.abs(idx - ridx) > 1e-6) | (ridx < 0) | (ridx > N))[0]
    if len(bad):
        raise DiffsimError(f"save/observation time {ts[bad[0]]:g} is not on the step grid "
                           f"t0 + k·dt (dt={h:g}) inside [{t0:g}, {t1:g}] ({len(bad)} of "
                           f"{len(ts)} times are not); choose dt dividing the observation spacing")
    if np.any(np.diff(ridx) <= 0):
        raise DiffsimError("saveat times must be strictly increasing")
    at0 = np.nonzero(ridx == 0)[0]
    obs0 = int(at0[0]) if len(at0) else -1
    later = np.nonzero(ridx > 0)[0]
    return StepGrid.uniform(t0, h, N, ridx[later] - 1, later, obs0, ts)


#: most steps of a fixed-step solve (memory is bounded in N, time is not)
MAX_STEPS = 1e12


def solve_bytes(n_steps, B, n, max_fused=None) -> float:
    """Bytes a fused explicit solve of ``n_steps`` keeps: the segment-boundary states
    (value, gradient and dual) plus one window of the step grid; bounded per step by
    24·B·n/max_fused (float64)."""
    from .integration import WINDOW
    K = float(n_steps) / (max_fused or runtime.MAX_FUSED_STEPS) + 1.0     # float: n may be inf
    return 24.0 * (K + 1) * B * n + 20.0 * min(float(n_steps), WINDOW)


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
          saveat=None, data=None, weights=None, gradient=None, adjoint: Adjoint | None = None,
          max_fused=None, adjoint_trace=None) -> Solution:
    """Integrate dy/dt = f(t, y, p) over t_span = (t0, t1) for a batch of B members.

    y0: (n,) or (B, n) initial states (ignored when the ODE has a y0(p) function).
    params: (m,) or (B, m). solver: RK4() by default; Dopri5(rtol, atol) picks its own
    steps (dt is then ignored); BackwardEuler() for stiff systems. dt: fixed step (time
    units). saveat: (J,) increasing save/observation times (default [t1]); fixed-step
    solvers need them on the step grid, Dopri5 lands a step on each.
    data: (J, n) or (B, J, n) observations at saveat (NaN = unobserved); weights: same
    shape (default 1 where data is given). The loss is Σ w (y - data)² + ∫ running +
    final (ODE hooks).
    gradient: None, "discrete" (exact, reverse mode through the steps), "adjoint"
    (continuous adjoint; options in ``adjoint=Adjoint(kind)``), "forward" (forward
    sensitivities; also fills ``Solution.sensitivities``) or "fd" (central differences).
    max_fused: steps per segment = checkpoint spacing (default runtime.MAX_FUSED_STEPS):
    memory is O(N / max_fused + max_fused) states. adjoint_trace: a list that receives
    (times, λ (L+1, B, n)) per segment when gradient="adjoint", for plots.
    """
    with quiet_trace():
        return _solve_checked(ode, t_span, y0, params, solver, dt, saveat, data, weights,
                              gradient, adjoint, max_fused, adjoint_trace)


def _solve_checked(ode, t_span, y0, params, solver, dt, saveat, data, weights, gradient,
                   adjoint, max_fused, adjoint_trace):
    solver = solver or RK4()
    ode.check()      # sizes and indices of the user functions, before any real kernel
    t0, t1 = (float(v) for v in t_span)
    if not (np.isfinite(t0) and np.isfinite(t1) and t1 > t0):
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
    if adjoint is not None and not isinstance(adjoint, Adjoint):
        raise DiffsimError(f"adjoint must be an Adjoint(kind=...) object, got {adjoint!r}")
    if saveat is not None:
        saveat = np.asarray(saveat, dtype=np.float64).ravel()
        bad = np.nonzero(~np.isfinite(saveat) | (saveat < t0 - 1e-12) | (saveat > t1 + 1e-12))[0]
        if len(bad):
            raise DiffsimError(f"saveat times must be finite and inside [{t0:g}, {t1:g}]: "
                               f"{len(bad)} of {len(saveat)} are not (first: saveat[{bad[0]}] = "
                               f"{saveat[bad[0]]:g})")
        if np.any(np.diff(saveat) <= 0):
            raise DiffsimError("saveat times must be strictly increasing")
    jac = jacobians(ode, solver, B)
    if solver.adaptive:
        from .adaptive import AdaptiveStepper, adaptive_grid
        y_start = y0 if ode.y0 is None else jac("y0", y0[None], t0, 0.0, params)[0][0]
        h, t, obs, obs0, ts = adaptive_grid(ode, solver, t0, t1, y_start, params, saveat)
        steps = StepGrid.arrays(h, t, obs, obs0, ts)
        stepper = AdaptiveStepper.get(ode, solver, B)
    else:
        steps = fixed_grid(t0, t1, dt, saveat)
        # memory is bounded in the number of steps but not constant: refuse before any
        # field is made (Taichi aborts the process on a failed allocation)
        runtime.check_memory(solve_bytes(steps.N, B, ode.n, max_fused),
                             what=f"an ODE solve of {steps.N:.3g} steps over [{t0:g}, {t1:g}]",
                             key="dt", value=dt)
    ts = steps.ts
    J = len(ts)
    d, w = _data(data, weights, B, J, ode.n)
    if solver.implicit:
        run = _ImplicitRun(ode, solver, jac, steps, d, w, max_fused)
    elif (solver.adaptive and gradient in (None, "adjoint") and ode.running is None
          and max_fused is None and steps.N <= TAPE_STEPS):
        # the adaptive stepper already holds the saved and final states: no fused
        # forward pass (it would repeat the same steps bit for bit)
        run = _SteppedRun(ode, solver, jac, steps, d, w, y_start, stepper)
    else:
        cap = steps.N
        if solver.adaptive:      # share one compiled integration across step counts
            cap = 1 << max(4, (cap - 1).bit_length())
        it = _integration(ode, solver, B, cap, J, max_fused)
        it.set_grid(steps)
        it.set_data(d, w)
        run = _ExplicitRun(it, solver, jac, merge=max_fused is None)
    if isinstance(gradient, Adjoint) and gradient.kind is not None:
        adjoint = gradient                     # an explicit kind passed as the method wins
    return _solve(run, ts, params, y0, gradient, adjoint or Adjoint(), adjoint_trace)


class _ExplicitRun:
    """Forward pass by the fused Taichi integration; tapes by its record kernel."""

    def __init__(self, it, solver, jac, merge):
        # this call's solver, not it.solver: the integration is cached per solver class,
        # and a later solve's controller settings (the adjoint's rtol/atol) must win
        self.it, self.solver, self.jac, self.merge = it, solver, jac, merge
        self.ode = it.ode

    def losses(self, params, y0):
        self.it.set_inputs(params, y0)
        self.it.forward()
        return self.it.member_losses()

    def outputs(self):
        it = self.it
        return it.saved(), it.checkpoints.astype(np.float64), it.segs, it.n_steps

    def grid(self, params, y0):
        it = self.it
        segs, cps = it.segs, it.checkpoints.astype(np.float64)
        if self.merge:
            # tape methods have no autodiff stack to bound: with the default spacing,
            # join the fused segments into tapes of up to TAPE_STEPS (fewer launches)
            segs, keep = _merge(segs, TAPE_STEPS)
            cps = cps[keep]
        return Grid(it.ode, self.solver, self.jac, it.steps, it.data.astype(np.float64),
                    it.weights.astype(np.float64), params, y0, it.record, segs, cps, it.backsolve)


class _SteppedRun:
    """An adaptive solve whose loss needs no fused forward pass: the loss and states come
    from the adaptive stepper's own run (save states, final state), one tape segment.
    Used for the loss only and the continuous adjoint without a running cost; the
    gradient methods that differentiate the steps (discrete, forward, fd) use the fused
    integration instead."""

    def __init__(self, ode, solver, jac, steps, d, w, y_start, stepper):
        self.ode, self.solver, self.jac, self.steps = ode, solver, jac, steps
        self.d, self.w = d, w
        self.ys, self.y_final = stepper.ys, stepper.y_final
        self.cps = np.stack([np.asarray(y_start, dtype=np.float64), self.y_final])
        self.segs = [(0, steps.N)]

    def losses(self, params, y0):
        g = self.grid(params, y0)
        r = self.ys - self.d
        return (self.w * r * r).sum(axis=(1, 2)) + g.final_terms(self.y_final)[0]

    def outputs(self):
        return self.ys, self.cps, self.segs, self.steps.N

    def grid(self, params, y0):
        return Grid(self.ode, self.solver, self.jac, self.steps, self.d, self.w, params, y0,
                    None, self.segs, self.cps)


#: longest tape segment of the forward and adjoint methods when solve(max_fused=None)
TAPE_STEPS = 4096


def _merge(segs, most):
    """Join consecutive (start, count) segments while the total stays ≤ most; returns the
    joined segments and the indices of the checkpoints that remain (starts, then end)."""
    out, keep = [], []
    for k, (i0, cnt) in enumerate(segs):
        if out and out[-1][1] + cnt <= most:
            out[-1] = (out[-1][0], out[-1][1] + cnt)
        else:
            out.append((i0, cnt))
            keep.append(k)
    return out, keep + [len(segs)]


class _ImplicitRun:
    """Forward pass of an implicit solver: Newton-solved tapes per segment, the loss
    summed from them in numpy (observations, trapezoid running cost, final cost)."""

    def __init__(self, ode, solver, jac, steps, d, w, max_fused):
        self.ode, self.solver, self.jac, self.steps = ode, solver, jac, steps
        self.h, self.t, self.obs, self.obs0 = steps.h, steps.t, steps.obs, steps.obs0
        self.d, self.w = d, w
        self.segs = runtime.segments(steps.N, max_fused)

    def _grid(self, params, y0, cps=None):
        from .implicit import implicit_tape

        def record(i0, cnt, ystart):
            return implicit_tape(self.ode, self.solver, self.h[i0:i0 + cnt], self.t[i0:i0 + cnt],
                                 ystart, params)
        return Grid(self.ode, self.solver, self.jac, self.steps, self.d,
                    self.w, params, y0, record, self.segs, cps)

    def losses(self, params, y0):
        g = self._grid(params, y0)
        y, _ = g.initial()
        B, n = y.shape
        ys = np.zeros((B, self.d.shape[1], n))
        loss = np.zeros(B)
        cps = [y]
        if self.obs0 >= 0:
            ys[:, self.obs0] = y
        for i0, cnt in self.segs:
            tape = g.record(i0, cnt, y)
            loss += self._segment_loss(g, i0, tape)
            hit = np.nonzero(self.obs[i0:i0 + cnt] >= 0)[0]
            ys[:, self.obs[i0 + hit]] = np.transpose(tape[hit + 1], (1, 0, 2))
            y = tape[-1]
            cps.append(y)
        loss += g.final_terms(y)[0]
        self.ys, self.cps = ys, np.array(cps)
        self.params, self.y0 = params, y0
        return loss

    def _segment_loss(self, g, i0, tape):
        first = 0 if i0 == 0 else 1         # a segment's first state is the previous one's last
        idx = np.arange(first, tape.shape[0])
        gidx = i0 + idx
        j = np.where(gidx > 0, self.obs[np.maximum(gidx - 1, 0)], self.obs0)
        hit = j >= 0
        tot = np.zeros(tape.shape[1])
        if hit.any():
            jj = j[hit]
            r = tape[idx[hit]] - np.transpose(self.d[:, jj], (1, 0, 2))
            tot += (np.transpose(self.w[:, jj], (1, 0, 2)) * r * r).sum(axis=(0, 2))
        if self.ode.running is not None:
            tt = self.steps.state_times(gidx)
            v, _, _ = g.jac("running", tape[idx], tt, 0.0, g.params)
            tot += (self.steps.trapezoid(gidx)[:, None] * v[:, :, 0]).sum(axis=0)
        return tot

    def outputs(self):
        return self.ys, self.cps, self.segs, self.steps.N

    def grid(self, params, y0):
        return self._grid(params, y0, self.cps)


def _solve(run, ts, params, y0, gradient, adjoint, trace) -> Solution:
    lb = run.losses(params, y0)
    loss = float(lb.sum())
    if not np.isfinite(loss):
        raise SimulationError(f"the solution blew up (loss = {loss}) at params {params.tolist()}: "
                              "lower dt, use an adaptive or implicit solver, or check the parameters")
    ys, cps, segs, steps = run.outputs()
    sol = Solution(ts=ts, ys=ys, y_final=cps[-1], loss=loss, method=gradient, steps=steps,
                   segments=len(segs), stored_states=len(segs) + 1)
    if gradient == "discrete" and not run.solver.implicit and not state_as_list():
        sol.grad_params, sol.grad_y0 = run.it.backward()
    elif gradient == "discrete":
        # implicit solvers (implicit function theorem), and explicit ones on Quadrants:
        # its reverse mode through the fused time loop is wrong for an rhs that computes
        # with a vector of y's components (docs/taichi-notes.md 33), while one step's
        # Jacobians, with no dynamic loop around them, are right; λ_i = Φ_iᵀ λ_{i+1} over
        # them is the same discrete gradient (measured equal to central differences)
        sol.grad_params, sol.grad_y0 = discrete_adjoint(run.grid(params, y0))
    elif gradient == "forward":
        gp, gy, S = forward_sensitivities(run.grid(params, y0), len(ts))
        sol.grad_params, sol.grad_y0, sol.sensitivities = gp, gy, S
    elif gradient == "adjoint":
        kind = adjoint.kind or "checkpointed"
        sol.grad_params, sol.grad_y0 = continuous_adjoint(run.grid(params, y0), kind,
                                                          trace, sol.stats)
        sol.stats["adjoint"] = kind
    elif gradient == "fd":
        sol.grad_params, sol.grad_y0 = _fd(run, params, y0)
        run.losses(params, y0)          # leave the run at the unperturbed inputs
    return sol


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


def _fd(run, params, y0, rel=1e-6):
    """Central differences of each member's loss, step rel·max(|x|, 1) per entry."""
    B, m, n = params.shape[0], params.shape[1], y0.shape[1]
    gp, gy = np.zeros((B, m)), np.zeros((B, n))
    cols = [("p", j) for j in range(m)] + ([] if run.ode.y0 is not None else [("y", c) for c in range(n)])
    for kind, j in cols:
        base = params if kind == "p" else y0
        hstep = rel * np.maximum(np.abs(base[:, j]), 1.0)
        vals = []
        for sgn in (1.0, -1.0):
            x = base.copy()
            x[:, j] += sgn * hstep
            vals.append(run.losses(x, y0) if kind == "p" else run.losses(params, x))
        g = (vals[0] - vals[1]) / (2 * hstep)
        if kind == "p":
            gp[:, j] = g
        else:
            gy[:, j] = g
    return gp, gy
