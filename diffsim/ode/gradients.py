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
  λ(T) = ∂φ/∂y, μ(T) = ∂φ/∂p with classic RK4 on the solver's step grid, λ jumping by
  2w(y - d) at observations; J = ∂f/∂y and ∂f/∂p at the RK4 stage points come from
  Taichi reverse mode of f. "backsolve" re-integrates y backwards with RK4 alongside λ
  (memory O(1) in N, but the backward state drifts on unstable or dissipative systems);
  "checkpointed" recomputes each segment forward from its checkpoint and takes the
  half-step states from cubic Hermite interpolation (accurate, O(K + N/K) memory).
  Cost grows with the number of states, not parameters.
- implicit solvers: Φ_i = (I - h J_{i+1})⁻¹, Ψ_i = (I - h J_{i+1})⁻¹ h ∂f/∂p at the
  converged state (implicit function theorem), never differentiating Newton iterations.

Every per-step matrix is assembled vectorised in numpy; the time recursions run in two
small forward-only Taichi kernels.
"""

import numpy as np
import taichi as ti

from .. import runtime
from ..errors import DiffsimError
from ..gradients import Adjoint  # noqa: F401 (re-exported by diffsim.ode)
from .pointwise import PointJacobian


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
    return _reverse(grid, lambda i0, tape, stages: _discrete_maps(grid, i0, tape))


def _discrete_maps(grid, i0, tape):
    phi, psi = grid.step_jacobians(i0, tape)
    L, B = phi.shape[:2]
    return (np.ascontiguousarray(np.swapaxes(phi, 2, 3)), np.zeros((L, B, grid.ode.n)),
            np.ascontiguousarray(np.swapaxes(psi, 2, 3)), np.zeros((L, B, grid.ode.m)))


def continuous_adjoint(grid: Grid, kind="checkpointed", trace=None):
    """Continuous adjoint (see module doc): (dL/dp (B, m), dL/dy0 (B, n)). trace: a list
    that receives (times, λ) per segment, for plots of the adjoint state."""
    if kind == "backsolve" and grid.solver.implicit:
        raise DiffsimError("Adjoint(kind='backsolve') integrates the state backwards with an "
                           "explicit method, which is unstable for the stiff problems implicit "
                           "solvers are for; use Adjoint(kind='checkpointed')")
    return _reverse(grid, lambda i0, tape, stages: _adjoint_maps(grid, i0, tape, stages),
                    backsolve=kind == "backsolve", discrete=False, trace=trace)


def _adjoint_maps(grid, i0, tape, stages):
    """Affine maps of one RK4 step of the (linear) adjoint ODE backwards in time:
    λ_i = R λ_{i+1} + r and μ_i = μ_{i+1} + G λ_{i+1} + g, from J at the stage states."""
    ode, p = grid.ode, grid.params
    n, m = ode.n, ode.m
    L = tape.shape[0] - 1
    h = grid.h[i0:i0 + L]
    t1 = grid.t[i0:i0 + L] + h
    if stages is None:       # checkpointed: stage states from the recomputed segment
        tt = np.concatenate([grid.t[i0:i0 + L], [t1[-1]]])
        hb = h[:, None, None]
        fv, Jg, Jpg = grid.jac("rhs", tape, tt, 0.0, p)     # f gives the Hermite half-steps
        mid = 0.5 * (tape[:-1] + tape[1:]) + hb / 8 * (fv[:-1] - fv[1:])   # cubic Hermite
        _, Jm, Jpm = grid.jac("rhs", mid, t1 - 0.5 * h, 0.0, p)
        Js = [Jg[1:], Jm, Jm, Jg[:-1]]
        Jps = [Jpg[1:], Jpm, Jpm, Jpg[:-1]]
        pts = [tape[1:], mid, mid, tape[:-1]]
    else:                    # backsolve: the recorded backward RK4 stages
        Js, Jps, pts = [], [], []
        for q, cq in enumerate((0.0, 0.5, 0.5, 1.0)):
            _, J, Jp = grid.jac("rhs", stages[:, q], t1 - cq * h, 0.0, p)
            Js.append(J)
            Jps.append(Jp)
            pts.append(stages[:, q])
    B = tape.shape[1]
    if ode.running is not None:
        gys, gps = [], []
        for q, cq in enumerate((0.0, 0.5, 0.5, 1.0)):
            _, gy, gp = grid.jac("running", pts[q], t1 - cq * h, 0.0, p)
            gys.append(gy[:, :, 0])
            gps.append(gp[:, :, 0])
    else:
        gys, gps = [np.zeros((L, B, n))] * 4, [np.zeros((L, B, m))] * 4
    hb = h[:, None, None]
    hv = h[:, None, None, None]
    eye = np.eye(n)
    A = [np.swapaxes(J, 2, 3) for J in Js]         # dλ/ds = Jᵀλ + g_y  (s = -t)
    C = [np.swapaxes(Jp, 2, 3) for Jp in Jps]      # dμ/ds = f_pᵀλ + g_p
    M, v = np.broadcast_to(eye, (L, B, n, n)), np.zeros((L, B, n))
    Rsum, rsum = np.zeros((L, B, n, n)), np.zeros((L, B, n))
    Gsum, gsum = np.zeros((L, B, m, n)), np.zeros((L, B, m))
    for q, (wq, cnext) in enumerate(((1, 0.5), (2, 0.5), (2, 1.0), (1, None))):
        K = A[q] @ M                                 # stage slope k_q = K λ + κ
        kap = np.einsum("lbij,lbj->lbi", A[q], v) + gys[q]
        Rsum += wq * K
        rsum += wq * kap
        Gsum += wq * (C[q] @ M)
        gsum += wq * (np.einsum("lbij,lbj->lbi", C[q], v) + gps[q])
        if cnext is not None:                        # next stage's λ = M λ + v
            M = eye + cnext * hv * K
            v = cnext * hb * kap
    R = eye + hv / 6 * Rsum
    return (np.ascontiguousarray(R), np.ascontiguousarray(hb / 6 * rsum),
            np.ascontiguousarray(hv / 6 * Gsum), np.ascontiguousarray(hb / 6 * gsum))


def _reverse(grid: Grid, maps, backsolve=False, discrete=True, trace=None):
    """Shared backward sweep over segments: λ from the final cost and observations,
    μ the parameter gradient; maps(i0, tape, stages) -> (R, r, G, g) per step. discrete:
    the running cost enters as the trapezoid sum's state gradients (the continuous
    adjoint takes it inside its maps instead)."""
    ode, B = grid.ode, grid.params.shape[0]
    n = ode.n
    _, rev = _kernels()
    _, fy, fp = grid.final_terms(grid.cps[-1])
    lam, mu = fy.copy(), fp.copy()
    tmp = np.zeros((B, n))
    yend = grid.cps[-1]
    src0 = None
    for k in reversed(range(len(grid.segs))):
        i0, cnt = grid.segs[k]
        stages = None
        if backsolve:
            stages, tape = grid.backsolve(i0, cnt, yend)
            yend = tape[0]
        else:
            tape = grid.record(i0, cnt, grid.cps[k])
        src, srcp = grid.state_sources(i0, tape, with_running=discrete)
        mu += srcp
        R, r, G, g = maps(i0, tape, stages)
        if trace is not None:
            trace.append(_lambda_path(grid, i0, R, r, src, lam))
        rev(R, r, G, g, src, lam, mu, tmp)
        src0 = src[0]
    lam += src0
    y_init, dy0dp = grid.initial()
    if dy0dp is not None:
        return mu + np.einsum("bc,bcj->bj", lam, dy0dp), np.zeros((B, n))
    return mu, lam


def _lambda_path(grid, i0, R, r, src, lam_end):
    """(times (L + 1,), λ (L + 1, B, n)) over one segment, for plots (numpy recursion)."""
    L = R.shape[0]
    path = np.zeros((L + 1,) + lam_end.shape)
    lam = lam_end + src[L]
    path[L] = lam
    for i in reversed(range(L)):
        lam = np.einsum("bij,bj->bi", R[i], lam) + r[i]
        path[i] = lam
        lam = lam + src[i]
    ts = grid.steps.state_times(np.arange(i0, i0 + L + 1))
    return ts, path
