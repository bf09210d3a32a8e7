"""Gradient methods built on per-step Jacobians: forward sensitivities, the continuous
adjoint (backsolve and checkpointed), and implicit-function-theorem gradients of implicit
solvers. (The "discrete" method of explicit solvers is Taichi reverse mode through the
fused time loop, in :mod:`diffsim.ode.integration`.)

Notation: N steps on a grid (h_i, t_i), states y_0 .. y_N, loss
L = Σ_j w_j·(y(t_j) - d_j)² + Σ_i ½h_i (g_i + g_{i+1}) + φ(y_N, p). Memory is bounded by
segments: forward states are kept at the segment boundaries only (the checkpoints) and
each segment's states, Jacobians and adjoint are recomputed from its checkpoint when
needed, so memory is O(K + N/K) states for K segments.

- forward: S_i = dy_i/dθ for θ = (p, y0) obeys S_{i+1} = Φ_i S_i + Ψ_i with
  Φ_i = ∂y_{i+1}/∂y_i, Ψ_i = ∂y_{i+1}/∂p the Jacobians of one solver step (Taichi reverse
  mode of the step, one pass per state row). For an explicit Runge–Kutta step this is
  the RK discretisation of the sensitivity equations S' = J S + ∂f/∂p, so it matches the
  discrete gradient to rounding. Cost grows with the number of parameters (columns).
- adjoint: λ' = -Jᵀλ - ∂g/∂y and μ' = -(∂f/∂p)ᵀλ - ∂g/∂p integrated backwards from
  λ(T) = ∂φ/∂y, μ(T) = ∂φ/∂p, λ jumping by 2w(y - d) at observations; J = ∂f/∂y and
  ∂f/∂p at the stage points come from Taichi reverse mode of f, kept in Taichi fields
  and read by the backward stage recursion (:class:`~diffsim.ode.adaptive.AdjointPass`:
  four launches per block of backward steps and pass). Fixed-step solvers: classic RK4
  on the solver's own step grid (error: that grid's discretisation error). Adaptive
  solvers (Dopri5): the
  solver's own pair on its accepted steps, each step split until the embedded error
  estimate of the backward system is within rtol/atol, so the gradient reaches the
  accuracy the solver was asked for. "backsolve" re-integrates y backwards alongside λ
  (memory O(1) in N, but the backward state drifts on unstable or dissipative systems);
  "checkpointed" recomputes each segment forward from its checkpoint and takes the
  states between steps from cubic Hermite interpolation (RK4) or Dopri5's 4th-order
  dense output (accurate, O(K + N/K) memory). Cost grows with the number of states,
  not parameters.
- implicit solvers: Φ_i = (I - h J_{i+1})⁻¹, Ψ_i = (I - h J_{i+1})⁻¹ h ∂f/∂p at the
  converged state (implicit function theorem), never differentiating Newton iterations.

Forward sensitivities and the discrete adjoint of implicit solvers assemble their
per-step matrices vectorised in numpy (:mod:`.pointwise`) and run the matrix recursions
in small forward-only Taichi kernels; the continuous adjoint keeps everything per step
in Taichi (:class:`~diffsim.ode.adaptive.AdjointPass`).
"""

import numpy as np
from ..backend import ti

from .. import runtime
from ..errors import DiffsimError, SimulationError
from ..gradients import Adjoint  # noqa: F401 (re-exported by diffsim.ode)
# DOPRI5_DENSE: re-exported, the dense output is documented with the adjoint here
from .adaptive import DOPRI5_DENSE, AdjointPass, AdjointStages  # noqa: F401
from .pointwise import PointJacobian
from .solvers import RK4, Dopri5


# Adjoint (kind "checkpointed" | "backsolve") is the one gradient-method object of
# diffsim.gradients; imported here so diffsim.ode.Adjoint stays where it was.


# -- the two time recursions ----------------------------------------------------------
_KERNELS = {}


def _kernels():
    gen = runtime.current().generation
    if _KERNELS.get("gen") == gen:
        return _KERNELS["fwd"], _KERNELS["rev"]

    nd = ti.types.ndarray()

    @ti.kernel
    def fwd(phi: nd, psi: nd, S: nd, src: nd, G: nd, obs: nd, SJ: nd, tmp: nd):
        # S_{i+1} = Φ_i S_i + [Ψ_i | 0];  G += src_{i+1}ᵀ S_{i+1};  SJ[j] = S at saves
        L, B, n, q, m = phi.shape[0], phi.shape[1], phi.shape[2], S.shape[2], psi.shape[3]
        ti.loop_config(serialize=True)
        for b in range(B):
            for i in range(L):
                for c in range(n):
                    for col in range(q):
                        acc = 0.0
                        for d in range(n):
                            acc += phi[i, b, c, d] * S[b, d, col]
                        if col < m:
                            acc += psi[i, b, c, col]
                        tmp[b, c, col] = acc
                j = obs[i]
                for col in range(q):
                    s = 0.0
                    for c in range(n):
                        S[b, c, col] = tmp[b, c, col]
                        s += src[i + 1, b, c] * tmp[b, c, col]
                        if j >= 0:
                            SJ[b, j, c, col] = tmp[b, c, col]
                    G[b, col] += s

    @ti.kernel
    def rev(R: nd, r: nd, Gm: nd, g: nd, src: nd, lam: nd, mu: nd, tmp: nd):
        # backwards: λ += src_{i+1};  μ += G_i λ + g_i;  λ = R_i λ + r_i
        L, B, n, m = R.shape[0], R.shape[1], R.shape[2], Gm.shape[2]
        ti.loop_config(serialize=True)
        for b in range(B):
            for ii in range(L):
                i = L - 1 - ii
                for c in range(n):
                    lam[b, c] += src[i + 1, b, c]
                for j in range(m):
                    s = g[i, b, j]
                    for c in range(n):
                        s += Gm[i, b, j, c] * lam[b, c]
                    mu[b, j] += s
                for c in range(n):
                    s = r[i, b, c]
                    for d in range(n):
                        s += R[i, b, c, d] * lam[b, d]
                    tmp[b, c] = s
                for c in range(n):
                    lam[b, c] = tmp[b, c]

    _KERNELS.update(gen=gen, fwd=fwd, rev=rev)
    return fwd, rev


# -- pointwise Jacobians of one (ODE, solver, batch) ----------------------------------
class Jacobians:
    """Lazily built PointJacobians of the step, f, running cost, final cost and y0(p)."""

    def __init__(self, ode, solver, B):
        self.ode, self.solver, self.B = ode, solver, B
        self._made = {}

    def _get(self, what):
        j = self._made.get(what)
        if j is None:
            ode, n, m = self.ode, self.ode.n, self.ode.m
            f, g, phi, y0 = ode.rhs, ode.running, ode.final, ode.y0
            if what == "step":
                fn, R = self.solver.make_step(ode), n
            elif what == "rhs":
                @ti.func
                def fn(t, y, p, h):
                    return f(t, y, p)
                R = n
            elif what == "running":
                @ti.func
                def fn(t, y, p, h):
                    return ti.Vector([g(t, y, p)])
                R = 1
            elif what == "final":
                @ti.func
                def fn(t, y, p, h):
                    return ti.Vector([phi(y, p)])
                R = 1
            else:
                @ti.func
                def fn(t, y, p, h):
                    return y0(p)
                R = n
            j = self._made[what] = PointJacobian(fn, n, m, R, self.B)
        return j

    def __call__(self, what, ys, ts, hs, ps):
        return self._get(what)(ys, ts, hs, ps)


def jacobians(ode, solver, B) -> Jacobians:
    gen = runtime.current().generation
    key = ("jacobians", type(solver).__name__, B, gen)
    j = ode._cache.get(key)
    if j is None:
        j = ode._cache[key] = Jacobians(ode, solver, B)
    return j


# -- the problem on a grid -------------------------------------------------------------
class Grid:
    """Everything a tape-based method needs: grid, data, inputs, a way to record states.

    record(i0, cnt, ystart) -> (cnt + 1, B, n) states; checkpoints (K + 1, B, n) at the
    segment starts ``segs`` (list of (i0, cnt)); y_init (B, n) the initial states."""

    def __init__(self, ode, solver, jac, steps, data, weights, params, y0,
                 record, segs, checkpoints, backsolve=None):
        self.ode, self.solver, self.jac, self.steps = ode, solver, jac, steps
        # lazily generated step sequences (diffsim.ode.steps): index them by segment
        self.h, self.t, self.obs, self.obs0 = steps.h, steps.t, steps.obs, steps.obs0
        self.D, self.W, self.params, self.y0 = data, weights, params, y0
        self.record, self.segs, self.cps, self.backsolve = record, segs, checkpoints, backsolve
        self.N = steps.N

    def state_sources(self, i0, tape, with_running=True):
        """dL/dy at tape states i0 .. i0 + L (observations and running cost, not φ):
        (L + 1, B, n), and the running cost's direct dL/dp summed over them (B, m)."""
        L = tape.shape[0] - 1
        src = np.zeros_like(tape)
        ks = np.arange(L + 1)
        gidx = i0 + ks                          # global state index
        j = np.where(gidx > 0, self.obs[np.maximum(gidx - 1, 0)], self.obs0)
        hit = np.nonzero(j >= 0)[0]
        if len(hit):
            jj = j[hit]
            src[hit] = 2 * np.transpose(self.W[:, jj], (1, 0, 2)) * (tape[hit] - np.transpose(self.D[:, jj], (1, 0, 2)))
        srcp = np.zeros((tape.shape[1], self.ode.m))
        if with_running and self.ode.running is not None:
            tt = self.steps.state_times(gidx)
            _, gy, gp = self.jac("running", tape, tt, 0.0, self.params)
            w = self.steps.trapezoid(gidx)[:, None, None]
            src += w * gy[:, :, 0, :]
            # a segment's first state is the previous segment's last: count it once
            srcp = (w * gp[:, :, 0, :])[0 if i0 == 0 else 1:].sum(axis=0)
        return src, srcp

    def initial(self):
        """(B, n) initial states and, when y0 is a function of p, dy0/dp (B, n, m)."""
        if self.ode.y0 is None:
            return self.y0, None
        v, _, jp = self.jac("y0", self.y0[None], self.t[0], 0.0, self.params)
        return v[0], jp[0]

    def final_terms(self, yN):
        """φ(y_N, p) (B,), ∂φ/∂y (B, n), ∂φ/∂p (B, m); zeros without a final cost."""
        B, n, m = yN.shape[0], self.ode.n, self.ode.m
        if self.ode.final is None:
            return np.zeros(B), np.zeros((B, n)), np.zeros((B, m))
        v, jy, jp = self.jac("final", yN[None], self.steps.t_end, 0.0, self.params)
        return v[0, :, 0], jy[0, :, 0], jp[0, :, 0]

    # -- per-step matrices -------------------------------------------------------------
    def step_jacobians(self, i0, tape):
        """Φ (L, B, n, n) and Ψ (L, B, n, m) of the steps i0 .. i0 + L - 1."""
        L = tape.shape[0] - 1
        sl = slice(i0, i0 + L)
        if self.solver.implicit:
            # backward Euler: y' = y + h f(t + h, y')  ⇒  (I - hJ) dy' = dy + h f_p dp
            t1 = self.t[sl] + self.h[sl]
            _, J, Jp = self.jac("rhs", tape[1:], t1, 0.0, self.params)
            hh = self.h[sl][:, None, None, None]
            A = np.eye(self.ode.n) - hh * J
            phi = np.linalg.inv(A)
            return phi, phi @ (hh * Jp)
        _, phi, psi = self.jac("step", tape[:-1], self.t[sl], self.h[sl], self.params)
        return phi, psi


def forward_sensitivities(grid: Grid, saves: int):
    """Forward method: (dL/dp (B, m), dL/dy0 (B, n), dy(t_j)/d(p, y0) (B, J, n, m + n))."""
    ode, B = grid.ode, grid.params.shape[0]
    n, m = ode.n, ode.m
    q = m + n
    fwd, _ = _kernels()
    y_init, dy0dp = grid.initial()
    S = np.zeros((B, n, q))
    if dy0dp is not None:
        S[:, :, :m] = dy0dp
    else:
        S[:, :, m:] = np.eye(n)
    G = np.zeros((B, q))
    SJ = np.zeros((B, max(saves, 1), n, q))
    tmp = np.zeros((B, n, q))
    for k, (i0, cnt) in enumerate(grid.segs):
        tape = grid.record(i0, cnt, grid.cps[k])
        src, srcp = grid.state_sources(i0, tape)
        if k == 0:
            G += np.einsum("bc,bcq->bq", src[0], S)
            if grid.obs0 >= 0:
                SJ[:, grid.obs0] = S
        G[:, :m] += srcp
        phi, psi = grid.step_jacobians(i0, tape)
        fwd(phi, psi, S, src, G, grid.obs[i0:i0 + cnt].astype(np.int32), SJ, tmp)
    _, fy, fp = grid.final_terms(grid.cps[-1])
    G += np.einsum("bc,bcq->bq", fy, S)
    G[:, :m] += fp
    gy0 = np.zeros((B, n)) if dy0dp is not None else G[:, m:]
    return G[:, :m], gy0, SJ


def discrete_adjoint(grid: Grid):
    """Reverse recursion λ_i = Φ_iᵀ λ_{i+1} over step Jacobians (the discrete gradient of
    implicit solvers, by the implicit function theorem): (dL/dp, dL/dy0)."""
    return _reverse(grid, lambda i0, tape: _discrete_maps(grid, i0, tape))


def _discrete_maps(grid, i0, tape):
    phi, psi = grid.step_jacobians(i0, tape)
    L, B = phi.shape[:2]
    return (np.ascontiguousarray(np.swapaxes(phi, 2, 3)), np.zeros((L, B, grid.ode.n)),
            np.ascontiguousarray(np.swapaxes(psi, 2, 3)), np.zeros((L, B, grid.ode.m)))


def continuous_adjoint(grid: Grid, kind="checkpointed", trace=None, stats=None):
    """Continuous adjoint (see module doc): (dL/dp (B, m), dL/dy0 (B, n)). trace: a list
    that receives (times (L + 1,), λ (L + 1, B, n)) per segment (adaptive: per chunk),
    last segment first, for plots of the adjoint state. stats: a dict that receives
    ``adjoint_steps`` (backward steps taken) and ``adjoint_passes`` (walks over segments
    or chunks; more than one per chunk when adaptive steps were split).

    Fixed-step solvers: classic RK4 backwards on the solver's own grid (its error is the
    grid's discretisation error). Adaptive solvers (Dopri5): the solver's own pair with
    error control at its rtol/atol (:func:`_adaptive_segment`). Both walk backwards with
    :class:`~diffsim.ode.adaptive.AdjointPass` (stage states, Jacobians of f and the
    running cost by Taichi reverse mode, and the stage recursion, kept in Taichi fields)."""
    if kind == "backsolve" and grid.solver.implicit:
        raise DiffsimError("Adjoint(kind='backsolve') integrates the state backwards with an "
                           "explicit method, which is unstable for the stiff problems implicit "
                           "solvers are for; use Adjoint(kind='checkpointed')")
    ode, solver, p = grid.ode, grid.solver, grid.params
    B, n, m = p.shape[0], ode.n, ode.m
    backsolve = kind == "backsolve"
    if solver.adaptive:
        if list(solver.c) != list(Dopri5.c) or list(solver.b) != list(Dopri5.b):
            raise DiffsimError(f"the continuous adjoint of {solver!r} needs Dopri5's dense "
                               "output; use Dopri5() or gradient='discrete'")
        tab = AdjointStages.get(ode, solver, B)
        ap = AdjointPass.get(ode, solver, B)
    else:
        ap = AdjointPass.get(ode, RK4, B)
    _, fy, fp = grid.final_terms(grid.cps[-1])
    z = np.concatenate([fy, fp], axis=1)              # (λ, μ) at t1
    yend = grid.cps[-1]
    src0 = None
    steps, passes = 0, 0
    for seg in reversed(range(len(grid.segs))):
        if solver.adaptive:
            pieces = _adaptive_segment(grid, ap, tab, seg, z, yend, backsolve)
        else:
            pieces = [_rk4_segment(grid, ap, seg, z, yend, backsolve)]
        for z, src, lp, times, yend, np_ in pieces:
            passes += np_
            steps += len(times) - 1
            if trace is not None:            # λ at each backward grid state, before its jump
                path = lp - src
                path[0], path[-1] = lp[0], lp[-1]
                trace.append((times, path))
            src0 = src[0]
    if stats is not None:
        stats.update(adjoint_steps=steps, adjoint_passes=passes)
    return _initial_gradients(grid, z[:, :n] + src0, z[:, n:])


def _obs_column(grid, i0, cnt):
    """Save index reached at the end of steps i0 .. i0 + cnt - 1, and at state i0 itself."""
    first = grid.obs0 if i0 == 0 else int(grid.obs[i0 - 1])
    return grid.obs[i0:i0 + cnt], first


def _rk4_segment(grid, ap, seg, z, yend, backsolve):
    """Classic RK4 backwards over one segment of a fixed-step (or implicit) grid, one
    :meth:`AdjointPass.run <diffsim.ode.adaptive.AdjointPass.run>`. Checkpointed: stage
    states from the recomputed segment (the half-step states by cubic Hermite
    interpolation); backsolve: the state integrated backwards by RK4 alongside λ."""
    i0, cnt = grid.segs[seg]
    h, t = grid.h[i0:i0 + cnt], grid.t[i0:i0 + cnt]
    B, n = grid.params.shape[0], grid.ode.n
    obs, first = _obs_column(grid, i0, cnt)
    sg = np.empty((cnt, 7))
    sg[:, 0], sg[:, 1], sg[:, 2], sg[:, 3] = h, t, np.arange(cnt), 0.0
    sg[:, 4], sg[:, 5], sg[:, 6] = 1.0, h, obs
    dw = np.ascontiguousarray(np.stack([grid.D, grid.W]), dtype=np.float64)
    if backsolve:
        ysub = np.zeros((cnt + 1, B, n))
        ysub[cnt] = yend
        z, out, _ = ap.run(sg, ysub, z, dw, first, grid.params, 1.0, 1.0, "back")
        yend = ysub[0]
    else:
        tape = np.ascontiguousarray(grid.record(i0, cnt, grid.cps[seg]))
        z, out, _ = ap.run(sg, tape, z, dw, first, grid.params, 1.0, 1.0, "hermite", tape)
    times = grid.steps.state_times(np.arange(i0, i0 + cnt + 1))
    return z, out[:, 0], out[:, 1], times, yend, 1


# -- the adjoint of adaptive solvers ----------------------------------------------------
#: passes over one segment (each splits the steps whose backward error was too large)
#: before the adjoint gives up with a SimulationError
ADJOINT_MAX_PASSES = 10
#: most backward sub-steps per accepted forward step
ADJOINT_MAX_SPLIT = 1 << 10
#: forward steps per chunk of the adaptive backward pass, and most sub-steps in a chunk
#: (memory: a chunk's sub-grid, its states and λ; the Jacobians are held per block of
#: AdjointPass.cap sub-steps)
ADJOINT_CHUNK = 1024
ADJOINT_CHUNK_SUBSTEPS = 4096


def _subgrid(h, t, sub):
    """Steps (h, t) (L,) with step i split into sub[i] equal sub-steps: sub-step sizes and
    start times (L',), each sub-step's parent step and index k inside it, and the
    sub-grid index of every original grid state (L + 1,)."""
    parent = np.repeat(np.arange(len(h)), sub)
    start = np.concatenate([[0], np.cumsum(sub)])
    k = np.arange(len(parent)) - start[parent]
    r = sub[parent]
    return h[parent] / r, t[parent] + h[parent] * (k / r), parent, k, start


def _adaptive_segment(grid, ap, tab, seg, z, yend, backsolve):
    """The continuous adjoint of an adaptive solver over one segment, backwards: the
    augmented backward system (λ, μ and, for backsolve, y) integrated by the solver's own
    embedded pair (Dopri5) with error control at its rtol/atol.

    The accepted forward steps are walked backwards; then every step whose error norm
    (RMS over λ, μ [, y] of err/(atol + rtol·max(|start|, |end|)), largest over the
    batch) exceeds 1 is split into equal sub-steps (the local error of the pair falls as
    the 5th power of the step) and the steps are walked again, until every step passes
    (else a SimulationError). Observation times are forward grid points, so λ's jumps
    fall on step boundaries. States at the stage times: checkpointed, from the forward
    step's 4th-order dense output (:data:`~diffsim.ode.adaptive.DOPRI5_DENSE`) on the
    recomputed segment; backsolve, the backward stages of y themselves. Each walk is one
    :meth:`AdjointPass.run <diffsim.ode.adaptive.AdjointPass.run>` (four launches per
    block of sub-steps, Jacobians kept in Taichi fields). Memory: the segment is
    processed in chunks of at most :data:`ADJOINT_CHUNK` forward steps and
    :data:`ADJOINT_CHUNK_SUBSTEPS` backward sub-steps (a chunk shrinks when its steps
    are split beyond that). Yields (z, src, lp, times, yend, passes) per chunk."""
    solver, p = grid.solver, grid.params
    B, n, m = p.shape[0], grid.ode.n, grid.ode.m
    rtol, atol = solver.controller.rtol, solver.controller.atol
    i0, cnt = grid.segs[seg]
    h_all, t_all = grid.h[i0:i0 + cnt], grid.t[i0:i0 + cnt]
    obs_all = grid.obs[i0:i0 + cnt]                 # save index reached by each step
    if not backsolve:
        tape_all, ks_all = tab.forward(h_all, t_all, grid.cps[seg], p)
    dw = np.ascontiguousarray(np.stack([grid.D, grid.W]), dtype=np.float64)
    comps = n + m + (n if backsolve else 0)
    sub_all = np.ones(cnt, np.int64)
    c1 = cnt
    while c1 > 0:
        c0 = max(0, c1 - ADJOINT_CHUNK)
        for passes in range(1, ADJOINT_MAX_PASSES + 1):
            h, t, sub = h_all[c0:c1], t_all[c0:c1], sub_all[c0:c1]
            hs, ts, parent, k, start = _subgrid(h, t, sub)
            L = len(hs)
            sg = np.empty((L, 7))
            sg[:, 0], sg[:, 1], sg[:, 2], sg[:, 3] = hs, ts, parent, k
            sg[:, 4], sg[:, 5], sg[:, 6] = sub[parent], h[parent], -1.0
            sg[start[1:] - 1, 6] = obs_all[c0:c1]
            obs_first = _obs_column(grid, i0 + c0, 0)[1]
            ysub = np.zeros((L + 1, B, n))
            if backsolve:
                ysub[L] = yend
                z_new, out, sq = ap.run(sg, ysub, z, dw, obs_first, p, rtol, atol, "back")
            else:
                ysub[start] = tape_all[c0:c1 + 1]
                z_new, out, sq = ap.run(sg, ysub, z, dw, obs_first, p, rtol, atol, "dense",
                                        tape_all[c0:c1 + 1], ks_all[c0:c1])
            err = np.sqrt(sq / comps).max(axis=1)                     # (L,)
            if not np.all(np.isfinite(err)):
                raise SimulationError(
                    f"the continuous adjoint of {solver!r} became NaN/inf near t = "
                    f"{ts[np.argmax(~np.isfinite(err))]:.6g}; check the parameters, or use "
                    "gradient='discrete'")
            worst = np.zeros(c1 - c0)
            np.maximum.at(worst, parent, err)
            bad = worst > 1.0
            if not bad.any():
                break
            # split so that the error (∝ h^5) drops to about half the tolerance
            sub[bad] *= np.maximum(2, np.ceil((2.0 * worst[bad]) ** 0.2)).astype(np.int64)
            if sub.max() > ADJOINT_MAX_SPLIT:
                break
            # too many sub-steps for one chunk: keep its later steps, start it afresh
            tot = np.cumsum(sub[::-1])
            if tot[-1] > ADJOINT_CHUNK_SUBSTEPS and c1 - c0 > 1:
                c0 = c1 - max(1, int(np.searchsorted(tot, ADJOINT_CHUNK_SUBSTEPS, side="right")))
        if bad.any():
            i = int(np.argmax(worst))
            raise SimulationError(
                f"the continuous adjoint of {solver!r} did not reach rtol={rtol:g}, "
                f"atol={atol:g} on the step at t = {t[i]:.6g} (error {worst[i]:.3g}× the "
                f"tolerance with it split into {sub[i]} sub-steps); loosen the tolerances "
                "or use gradient='discrete'")
        if backsolve:
            yend = ysub[0]
        z = z_new
        yield z, out[:, 0], out[:, 1], np.concatenate([ts, ts[-1:] + hs[-1:]]), yend, passes
        c1 = c0


def _reverse(grid: Grid, maps):
    """Backward sweep of the discrete adjoint over segments: λ from the final cost and
    observations, μ the parameter gradient; maps(i0, tape) -> (R, r, G, g) per step."""
    ode, B = grid.ode, grid.params.shape[0]
    _, rev = _kernels()
    _, fy, fp = grid.final_terms(grid.cps[-1])
    lam, mu = fy.copy(), fp.copy()
    tmp = np.zeros((B, ode.n))
    src0 = None
    for k in reversed(range(len(grid.segs))):
        i0, cnt = grid.segs[k]
        tape = grid.record(i0, cnt, grid.cps[k])
        src, srcp = grid.state_sources(i0, tape)
        mu += srcp
        R, r, G, g = maps(i0, tape)
        rev(R, r, G, g, src, lam, mu, tmp)
        src0 = src[0]
    return _initial_gradients(grid, lam + src0, mu)


def _initial_gradients(grid, lam, mu):
    """(dL/dp, dL/dy0) from λ(t0) and μ(t0): through y0(p) when the ODE has one."""
    _, dy0dp = grid.initial()
    if dy0dp is not None:
        return mu + np.einsum("bc,bcj->bj", lam, dy0dp), np.zeros(lam.shape)
    return mu, lam
