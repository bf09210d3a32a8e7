"""Adaptive step grids: Dormand–Prince 5(4) step-size control in one Taichi kernel.

:func:`adaptive_grid` runs the embedded pair forward (no autodiff) and returns the
accepted steps in the same form as :func:`diffsim.ode.solve.fixed_grid`, so the fused
fixed-grid kernels (and their reverse mode) can then integrate and differentiate on
exactly those steps with the pair's 5th-order weights b.

Control (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.4), with the settings of the
solver's :class:`~diffsim.controllers.PIController` (defaults in brackets):

* one grid for the whole batch: member b's error is the RMS over components of
  ``h·Σ e_s k_s / (atol + rtol·max(|y|, |y_new|))``; a step is accepted when the
  largest member error is ≤ 1;
* next step ``h·clamp(safety·err^(-β1)·err_prev^(β2), factor_min, factor_max)`` with
  β1 = (pcoeff + icoeff)/order, β2 = pcoeff/order, err_prev the last accepted step's
  error (at least 1e-4; [safety 0.9, factors 0.2 and 10, β1 = 1/5, β2 = 0]);
  factor_max when err = 0; the step right after a rejection may not grow; a non-finite
  error counts as a rejection with factor_min; steps never exceed t1 - t0;
* every save time and t1 are hit exactly: a step that would pass the next target, or
  end within 1 % of the proposed step before it, is shortened (or stretched by at most
  1 %) to ``h = target - t``, its state is the state at the target (no interpolation)
  and the next step starts at the target time itself: ``t[i+1] == ts[j]`` bit for bit.
  ``t[i] + h[i]`` (IEEE) equals ``ts[j]`` too except within one ulp in round-to-even
  tie cases where no float64 h gives the target (a few % of steps that start before
  target/2). After such a clipped step the next proposal is at least the step the
  controller had proposed before clipping;
* first step: the controller's ``h0`` when given, else Hairer's heuristic (``hinit`` of
  DOPRI5: from ‖y0‖, ‖f(t0, y0)‖ and a finite-difference estimate of ‖f'‖, in the same
  scaled norm), minimised over the batch and capped at t1 - t0;
* FSAL: the last stage, evaluated at the next step's start time, is the next step's
  first stage, so re-running ``ExplicitRK.make_step`` on (t, h) repeats the same rhs
  evaluations and reproduces the states.

Failures raise :class:`~diffsim.errors.SimulationError`: more than the controller's
``max_steps`` attempts (accepted + rejected), or the step size underflowing (too stiff,
or the state or its derivative not finite), each naming the time reached.

Taichi shape: one kernel launch per grid; its only top-level loop is a serialized
``range(1)`` (no parallel dispatch), the step loop is a ``while`` inside it and the batch
loop sits inside each step. States are kept in small per-(ODE, solver, B) fields,
cached on ``ode._cache`` per runtime generation; inputs and the grid itself pass
through numpy ndarray arguments, so neither the number of save times nor max_steps
causes a recompilation.
"""
import math

import numpy as np
from ..backend import impl as _impl, ti

from .. import runtime
from ..errors import DiffsimError, SimulationError
from ..controllers import PIController
from .solvers import _at, _comb, quiet_trace

#: status codes written by the kernel
_OK, _MAX_STEPS, _UNDERFLOW, _NONFINITE = 0, 1, 2, 3


def adaptive_grid(ode, solver, t0, t1, y0, params, saveat):
    """Accepted step grid of an embedded explicit RK pair (``Dopri5``) on [t0, t1].

    y0: (B, n) or (n,) initial states (ignored, may be None, when the ODE has a y0(p)
    function: then y0(p) is used, as the fixed-grid kernels do); params: (B, m) or (m,);
    saveat: None (= [t1]) or increasing times in [t0, t1].
    Returns ``(h (N,), t (N,), obs (N,) int32, obs0, ts)`` like ``fixed_grid``: step
    sizes, step start times, the save index reached at the end of each step (-1: none),
    the index of a save time equal to t0 (-1: none) and the save times.
    """
    ode.check()
    with quiet_trace():
        return AdaptiveStepper.get(ode, solver, _batch(y0, params)).grid(
            solver, t0, t1, y0, params, saveat)


def _batch(y0, params):
    B = 1
    for a in (params, y0):
        if a is not None:
            a = np.asarray(a)
            B = max(B, a.shape[0] if a.ndim == 2 else 1)
    return B


def _as_batch(a, width, what, B):
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != width or a.shape[0] not in (1, B):
        raise DiffsimError(f"{what} must have shape ({width},) or ({B}, {width}), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise DiffsimError(f"{what} contains NaN or inf: {a.tolist()}")
    return np.broadcast_to(a, (B, width))


def _check_solver(solver):
    need = ("a", "b", "c", "e", "order")
    ctl = getattr(solver, "controller", None)
    if not (getattr(solver, "adaptive", False) and all(hasattr(solver, k) for k in need)
            and isinstance(ctl, PIController)):
        raise DiffsimError(f"adaptive_grid needs an embedded Runge–Kutta solver with an "
                           f"error-controlling step-size controller, such as Dopri5() "
                           f"(PIController), got {solver!r}")
    if len(solver.e) != len(solver.b):
        raise DiffsimError(f"{solver!r}: error weights e and weights b differ in length")


def _is_fsal(a, b, c):
    s = len(b)
    return s > 1 and b[-1] == 0.0 and c[-1] == 1.0 and list(a[-1]) == list(b[:-1])


def _targets(t0, t1, saveat):
    """Save times (J,), obs0, the targets (strictly increasing times in (t0, t1]) and the
    save index each target records (-1 for t1 when it is not a save time)."""
    ts = np.array([t1] if saveat is None else saveat, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(ts)):
        raise DiffsimError(f"saveat contains NaN or inf: {ts.tolist()}")
    if np.any(np.diff(ts) <= 0):
        raise DiffsimError("saveat times must be strictly increasing")
    tol = 1e-12 * max(abs(t0), abs(t1), t1 - t0)
    out = np.nonzero((ts < t0 - tol) | (ts > t1 + tol))[0]
    if len(out):
        raise DiffsimError(f"save/observation time {ts[out[0]]} lies outside [{t0}, {t1}]")
    obs0 = -1
    tgt, idx = [], []
    for j, s in enumerate(ts):
        if abs(s - t0) <= tol:
            obs0 = j
            continue
        if abs(s - t1) <= tol:
            s = t1                      # within rounding of t1: end on t1 itself
        tgt.append(s)
        idx.append(j)
    if not tgt or tgt[-1] != t1:
        tgt.append(t1)
        idx.append(-1)
    return ts, obs0, np.array(tgt), np.array(idx, dtype=np.int32)


def _keep(v, n):
    """Trace-time helper: a vector expression stored in a local, then component by
    component in fresh scalar locals. Taichi 1.7.4 substitutes a ti.func's returned
    expression (and, through it, its arguments) wherever the result is used, so feeding
    each stage into the next unstored makes the 7-stage kernel's IR grow exponentially
    (over 10 minutes of compilation for the 2-state oscillator). Storing the whole vector
    first, then its components, compiles ~3x faster than storing components directly
    (`[e0, e1][i]` lowers every component)."""
    w = _impl.expr_init(v)
    return ti.Vector([_impl.expr_init(_at(w, i)) for i in range(n)])


def _cached(cls, what, ode, solver, B):
    """The ``cls`` object for (ODE, tableau, B) in this runtime, built once and kept in the
    ODE's cache (its kernels compile once per runtime generation)."""
    _check_solver(solver)
    key = (what, type(solver).__name__, tuple(solver.c), int(B), runtime.current().generation)
    st = ode._cache.get(key)
    if st is None:
        st = ode._cache[key] = cls(ode, solver, B)
    return st


class AdaptiveStepper(runtime.RuntimeBound):
    """Fields and the stepping kernel for one (ODE, tableau, batch size B).

    After :meth:`grid`: :attr:`ys` (B, J, n) states at the save times, :attr:`y_final`
    (B, n), :attr:`stats` (accepted, rejected, attempts, rhs evaluations)."""

    @classmethod
    def get(cls, ode, solver, B):
        return _cached(cls, "adaptive", ode, solver, B)

    def __init__(self, ode, solver, B):
        info = self._bind_runtime()
        real = info.real
        self.ode, self.B = ode, int(B)
        self.a, self.b, self.c, self.e = (list(map(float, v)) if k != "a" else
                                          [list(map(float, r)) for r in v]
                                          for k, v in zip("abce", (solver.a, solver.b,
                                                                   solver.c, solver.e)))
        self.order = int(solver.order)
        self.fsal = _is_fsal(self.a, self.b, self.c)
        self.np_real = info.numpy_dtype
        self.eps = float(np.finfo(self.np_real).eps)
        n, m = ode.n, ode.m
        self.P = ti.field(real, (B, m))
        self.Y = ti.field(real, (B, n))       # current accepted state
        self.K1 = ti.field(real, (B, n))      # f(t, Y): first stage of the next attempt
        self.YN = ti.field(real, (B, n))      # attempted state
        self.KN = ti.field(real, (B, n))      # f(t + h, YN) (FSAL)
        self._compile(real)

    def _compile(self, real):
        ode, B, n, m = self.ode, self.B, self.ode.n, self.ode.m
        f, f_y0 = ode.rhs, ode.y0
        has_y0 = f_y0 is not None
        a, b, c, e = self.a, self.b, self.c, self.e
        s, fsal, order = len(b), self.fsal, self.order
        combs = [_comb(n, a[i]) for i in range(s)]
        final = _comb(n, b)
        eidx = [j for j in range(s) if e[j] != 0.0]
        P, Y, K1, YN, KN = self.P, self.Y, self.K1, self.YN, self.KN

        @ti.func
        def finite(x):
            # bit test: fast_math (Taichi's default) may fold NaN comparisons away. On
            # float64 whatever x's type: the step times are f64 in an f32 runtime too, and
            # bit-casting one to u32 aborted the process (an LLVM "Invalid cast" assertion)
            return (ti.bit_cast(ti.cast(x, ti.f64), ti.u64) >> 52) & 0x7FF != 0x7FF

        @ti.func
        def pvec(bb):
            return ti.Vector([P[bb, j] for j in ti.static(range(m))])

        @ti.func
        def vec(F, bb):
            return ti.Vector([F[bb, i] for i in ti.static(range(n))])

        @ti.func
        def attempt(bb, t, h, tn, atol, rtol):
            """One trial step of member bb: stores YN and KN = f(tn, YN) (the next first
            stage: the FSAL stage, or one extra evaluation); returns its error norm²·n.
            Every argument is in the runtime's precision, as in the fixed-grid kernels."""
            y, p = vec(Y, bb), pvec(bb)
            ks = [vec(K1, bb)]
            for i in ti.static(range(1, s - 1 if fsal else s)):
                ks.append(_keep(f(t + c[i] * h, combs[i](y, h, ks), p), n))
            yn = _keep(final(y, h, ks), n)
            kn = _keep(f(tn, yn, p), n)
            if ti.static(fsal):
                ks.append(kn)
            acc = 0.0
            for i in ti.static(range(n)):
                err = h * sum([e[j] * ks[j][i] for j in eidx])
                sc = atol + rtol * ti.max(ti.abs(y[i]), ti.abs(yn[i]))
                acc += (err / sc) ** 2
            for i in ti.static(range(n)):
                YN[bb, i] = yn[i]
                KN[bb, i] = kn[i]
            return acc

        @ti.func
        def hinit(t0, span, atol, rtol):
            """Hairer's initial step (DOPRI5 hinit), smallest over the batch."""
            hb = span
            for bb in range(B):
                y, p, f0 = vec(Y, bb), pvec(bb), vec(K1, bb)
                d0, d1 = 0.0, 0.0
                for i in ti.static(range(n)):
                    sc = atol + rtol * ti.abs(y[i])
                    d0 += (y[i] / sc) ** 2
                    d1 += (f0[i] / sc) ** 2
                d0, d1 = ti.sqrt(d0 / n), ti.sqrt(d1 / n)
                h = 1e-6
                if d0 >= 1e-5 and d1 >= 1e-5:
                    h = 0.01 * d0 / d1
                h = ti.min(h, span)
                y1 = ti.Vector([y[i] + h * f0[i] for i in ti.static(range(n))])
                f1 = f(t0 + h, y1, p)
                d2 = 0.0
                for i in ti.static(range(n)):
                    sc = atol + rtol * ti.abs(y[i])
                    d2 += ((f1[i] - f0[i]) / sc) ** 2
                d2 = ti.sqrt(d2 / n) / h
                dm = ti.max(d1, d2)
                h1 = ti.max(1e-6, 1e-3 * h)
                if dm > 1e-15:
                    h1 = (0.01 / dm) ** (1.0 / order)
                hm = ti.min(100.0 * h, h1)
                if finite(hm) and hm > 0.0:
                    hb = ti.min(hb, hm)
            return hb

        @ti.kernel
        def integrate(y0: ti.types.ndarray(), p: ti.types.ndarray(), tgt: ti.types.ndarray(),
                      tidx: ti.types.ndarray(), n_tgt: ti.i32, obs0: ti.i32, t0: ti.f64,
                      t1: ti.f64, h_init: ti.f64, rtol: real, atol: real, eps: ti.f64,
                      max_att: ti.i32, safety: ti.f64, fmin: ti.f64, fmax: ti.f64,
                      b1: ti.f64, b2: ti.f64,
                      h_out: ti.types.ndarray(), t_out: ti.types.ndarray(),
                      obs_out: ti.types.ndarray(), ys: ti.types.ndarray(),
                      yf: ti.types.ndarray(), iout: ti.types.ndarray(),
                      fout: ti.types.ndarray()):
            ti.loop_config(serialize=True)
            for _ in range(1):
                for bb in range(B):
                    for j in ti.static(range(m)):
                        P[bb, j] = p[bb, j]
                    y = ti.Vector([y0[bb, i] for i in ti.static(range(n))])
                    if ti.static(has_y0):
                        y = f_y0(pvec(bb))
                    k1 = f(ti.cast(t0, real), y, pvec(bb))
                    for i in ti.static(range(n)):
                        Y[bb, i] = y[i]
                        K1[bb, i] = k1[i]
                        if obs0 >= 0:
                            ys[bb, obs0, i] = y[i]
                span = t1 - t0
                h = h_init
                if h <= 0.0:
                    h = hinit(ti.cast(t0, real), ti.cast(span, real), atol, rtol)
                t = t0
                k = 0
                n_acc, n_att, n_rej, status = 0, 0, 0, _OK
                rejected = False
                err = 0.0
                err_prev = 1.0                  # the last accepted step's error (PI term)
                while k < n_tgt:
                    if n_att >= max_att:
                        status = _MAX_STEPS
                        break
                    target = tgt[k]
                    hs = h
                    land = False
                    if t + 1.01 * h >= target:
                        hs = target - t
                        land = True
                    elif hs <= 10.0 * eps * ti.max(ti.abs(t), ti.abs(target)) or not finite(hs):
                        status = _UNDERFLOW
                        if not finite(err):
                            status = _NONFINITE
                        break
                    tn = t + hs
                    if land:
                        tn = target
                    err = 0.0
                    for bb in range(B):
                        eb = attempt(bb, ti.cast(t, real), ti.cast(hs, real),
                                     ti.cast(tn, real), atol, rtol)
                        if not finite(eb):
                            err = ti.math.inf
                        elif finite(err):
                            err = ti.max(err, ti.sqrt(eb / n))
                    n_att += 1
                    fac = fmax
                    if not finite(err):
                        fac = fmin
                    elif err > 0.0:
                        fac = ti.min(fmax, ti.max(fmin, safety * err ** (-b1) * err_prev ** b2))
                    if finite(err) and err <= 1.0:
                        h_out[n_acc] = hs
                        t_out[n_acc] = t
                        j = -1
                        if land:
                            j = tidx[k]
                            k += 1
                        obs_out[n_acc] = j
                        for bb in range(B):
                            for i in ti.static(range(n)):
                                Y[bb, i] = YN[bb, i]
                                K1[bb, i] = KN[bb, i]
                            if j >= 0:
                                for i in ti.static(range(n)):
                                    ys[bb, j, i] = YN[bb, i]
                        n_acc += 1
                        err_prev = ti.max(err, 1e-4)
                        t = tn
                        if rejected:
                            fac = ti.min(fac, 1.0)
                        hn = hs * fac
                        if land:
                            hn = ti.max(hn, h)
                        h = ti.min(hn, span)
                        rejected = False
                    else:
                        n_rej += 1
                        h = hs * ti.min(fac, 1.0)
                        rejected = True
                for bb in range(B):
                    for i in ti.static(range(n)):
                        yf[bb, i] = Y[bb, i]
                iout[0] = n_acc
                iout[1] = n_rej
                iout[2] = n_att
                iout[3] = status
                fout[0] = t
                fout[1] = h
                fout[2] = err

        self._integrate = integrate

    def grid(self, solver, t0, t1, y0, params, saveat):
        """See :func:`adaptive_grid`."""
        self._check_runtime()
        _check_solver(solver)
        ode, B, n, m = self.ode, self.B, self.ode.n, self.ode.m
        t0, t1 = float(t0), float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1) and t1 > t0):
            raise DiffsimError(f"the time span must be (t0, t1) with t1 > t0, got ({t0}, {t1})")
        if params is None:
            raise DiffsimError(f"params is required: an array of shape ({m},) or (B, {m})")
        p = _as_batch(params, m, "params", B)
        if y0 is None:
            if ode.y0 is None:
                raise DiffsimError(f"{ode.name} has no y0(p) function; pass y0 of shape "
                                   f"({n},) or (B, {n})")
            y0 = np.zeros((B, n))
        y = _as_batch(y0, n, "y0", B)
        ts, obs0, tgt, tidx = _targets(t0, t1, saveat)
        ctl = solver.controller           # settings checked by PIController itself
        h0 = 0.0 if ctl.h0 is None else ctl.h0        # 0: Hairer's heuristic in the kernel
        cap = ctl.max_steps
        b1, b2 = ctl.exponents(self.order)
        # the accepted-step arrays are sized by max_steps (20 bytes a step)
        runtime.check_memory(20.0 * cap, what=f"the step grid of {solver!r}",
                             key="max_steps", value=cap)
        J, r = len(ts), self.np_real
        h_out, t_out = np.zeros(cap), np.zeros(cap)     # times stay float64
        obs = np.full(cap, -1, np.int32)
        ys, yf = np.zeros((B, max(J, 1), n), r), np.zeros((B, n), r)
        iout, fout = np.zeros(4, np.int32), np.zeros(3, np.float64)
        self._integrate(np.ascontiguousarray(y, r), np.ascontiguousarray(p, r),
                        np.ascontiguousarray(tgt, np.float64), tidx, len(tgt), obs0, t0, t1,
                        float(min(h0, t1 - t0)), ctl.rtol, ctl.atol, self.eps, cap,
                        ctl.safety, ctl.factor_min, ctl.factor_max, b1, b2,
                        h_out, t_out, obs, ys, yf, iout, fout)
        N, n_rej, n_att, status = (int(v) for v in iout)
        t_end, h_last = float(fout[0]), float(fout[1])
        per_attempt = len(self.b) - (1 if self.fsal else 0)
        self.stats = dict(accepted=N, rejected=n_rej, attempts=n_att,
                          rhs_evals=(n_att * per_attempt + (2 if h0 == 0.0 else 1)) * B)
        where = f"t = {t_end:.15g} of [{t0:.15g}, {t1:.15g}]"
        if status == _MAX_STEPS:
            raise SimulationError(
                f"{solver!r} needed more than max_steps={cap} steps (accepted + rejected: "
                f"{N} + {n_rej}) and stopped at {where} with step {h_last:.3g}; raise "
                f"max_steps, loosen rtol/atol (rtol={ctl.rtol}, atol={ctl.atol}), or "
                "use BackwardEuler() if the problem is stiff")
        if status == _NONFINITE:
            raise SimulationError(
                f"{solver!r}: the state or its derivative became NaN/inf at {where} (the last "
                f"attempt gave NaN/inf and the step size underflowed to {h_last:.3g}); check the "
                "parameters and the right-hand side, or use BackwardEuler() if the problem "
                "is stiff")
        if status == _UNDERFLOW:
            raise SimulationError(
                f"{solver!r}: the step size underflowed ({h_last:.3g}) at {where}; the "
                "solution may be singular there or the problem too stiff: check the "
                "parameters, loosen rtol/atol, or use BackwardEuler()")
        if not np.all(np.isfinite(yf)):
            raise SimulationError(f"{solver!r}: the solution is not finite at {where}")
        self.ys = ys[:, :J].astype(np.float64)
        self.y_final = yf.astype(np.float64)
        return (h_out[:N].astype(np.float64), t_out[:N].astype(np.float64),
                obs[:N].copy(), int(obs0), ts)


#: Dopri5's continuous extension (Shampine 1986; the coefficients of Hairer's DOPRI5 dense
#: output as used by scipy's RK45): y(t + θh) = y + h Σ_j k_j Σ_r P[j, r] θ^(r+1) with the
#: step's 7 stage slopes k_j; 4th order, equal to the step's 5th-order result at θ = 1
DOPRI5_DENSE = np.array([
    [1, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432],
    [0, 0, 0, 0],
    [0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799],
    [0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072],
    [0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632],
    [0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844],
    [0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423]])

#: Jacobian copies (points × batch × rows) an AdjointPass holds at once: its fields take
#: about copies × (n + m + 1) × 16 bytes; a pass over more sub-steps runs in blocks
ADJOINT_COPIES = 1 << 15
#: copies from which the Jacobian evaluation runs in parallel: a full block only (a
#: parallel launch costs ~150 µs of dispatch on CPU; measured on Lotka–Volterra at
#: rtol 1e-10, 11,000 copies: serial 2.0 ms per adjoint, parallel from 4,096: 3.0 ms)
ADJOINT_PARALLEL_MIN = ADJOINT_COPIES


class AdjointPass(runtime.RuntimeBound):
    """One backward walk of the continuous adjoint by an explicit Runge–Kutta tableau (an
    embedded pair such as Dopri5 with its error estimate, or classic RK4 without one)
    over a sub-grid of steps, in four Taichi launches per block of sub-steps and no numpy
    work per step (:func:`diffsim.ode.gradients.continuous_adjoint` drives it).

    The sub-grid ``sg`` (L, 7) float64 has one row per backward sub-step: size h, start
    time t, parent step index (in the chunk), index k inside the parent, number of
    sub-steps r of the parent, the parent's size, and the save index reached at the
    sub-step's end (-1: none). States at the sub-grid points are ``ysub`` (L + 1, B, n).
    Per block of sub-steps (from the last):

    1. the state at every stage point (time t + h - c_q h, θ = (k + 1 - c_q)/r of the
       parent step) goes into the X field: ``points="dense"``, Dopri5's dense output of
       the forward step (``tape`` (L_f + 1, B, n) states and ``ks`` (L_f, s, B, n) stage
       slopes of the forward steps); ``"hermite"``, the cubic Hermite interpolant of the
       step from its two end states and f there (``tape`` only); ``"back"``, the state
       integrated backwards by the same tableau (backsolve; it fills ``ysub`` and adds
       the y part of the error estimate to ``err``);
    2. ``evaluate`` and its reverse (``evaluate.grad``): rows r < n are f_r, row n the
       running cost g, so X.grad / PX.grad hold [J | ∂f/∂p] and [∂g/∂y | ∂g/∂p];
    3. ``sweep``: z = (λ, μ) one pair step backwards per sub-step, λ jumping by
       2w(y - d) at save points (observations), reading the Jacobians from the fields.
       Writes ``out[l, 0]`` = the jump at sub-grid state l, ``out[l, 1]`` = λ after it
       (``out[0, 1]``: λ at the first state before its jump) and adds to ``err[l, b]`` the
       sum over (λ, μ) of (h·Σ e_q k_q / (atol + rtol·max(|z|, |z'|)))².
    """

    @classmethod
    def get(cls, ode, tableau, B):
        """The pass of ``tableau`` (a solver class or object with a, b, c and, for error
        control, e) for (ODE, B) in this runtime, built once (cached on the ODE)."""
        e = tuple(getattr(tableau, "e", None) or [0.0] * len(tableau.b))
        key = ("adjoint_pass", tuple(map(tuple, tableau.a)), tuple(tableau.b),
               tuple(tableau.c), e, int(B), runtime.current().generation)
        st = ode._cache.get(key)
        if st is None:
            st = ode._cache[key] = cls(ode, tableau, B)
        return st

    def __init__(self, ode, tableau, B):
        info = self._bind_runtime()
        self.ode, self.B = ode, int(B)
        self.a = [list(map(float, r)) for r in tableau.a]
        self.b, self.c = list(map(float, tableau.b)), list(map(float, tableau.c))
        self.e = list(map(float, getattr(tableau, "e", None) or [0.0] * len(self.b)))
        self.dense_ok = len(self.b) == DOPRI5_DENSE.shape[0]
        self.np_real = info.numpy_dtype
        n, m, s = ode.n, ode.m, len(self.b)
        self.R = R = n + (1 if ode.running is not None else 0)
        self.cap = max(1, ADJOINT_COPIES // (s * self.B * R))      # sub-steps per block
        pts = self.cap * s
        runtime.check_memory(pts * self.B * R * (n + m + 1) * 16.0 + pts * 8.0,
                             what=f"the continuous adjoint's Jacobian fields (batch {B})",
                             key="batch", value=B)
        real = info.real
        self.X = ti.field(real, (pts, B, R, n), needs_grad=True)
        self.PX = ti.field(real, (pts, B, R, m), needs_grad=True)
        self.O = ti.field(real, (pts, B, R), needs_grad=True)
        self.TX = ti.field(real, pts)
        self.KS = ti.field(ti.f64, (s + 1, B, n + m))
        self._compile(real)

    def _compile(self, real):
        ode, B, n, m, R = self.ode, self.B, self.ode.n, self.ode.m, self.R
        f, g = ode.rhs, ode.running
        has_run = g is not None
        a, b, c, e = self.a, self.b, self.c, self.e
        s = len(b)
        N = n + m
        combs = [_comb(n, a[i]) for i in range(s)]
        final = _comb(n, b)
        eidx = [j for j in range(s) if e[j] != 0.0]
        dense = [[float(v) for v in row] for row in DOPRI5_DENSE]
        didx = [j for j in range(s) if any(dense[j])]       # stages the dense output uses
        X, PX, O, TX, KS = self.X, self.PX, self.O, self.TX, self.KS
        nd = ti.types.ndarray()

        @ti.func
        def put(pt, bb, y, p, t):
            # one stage point: R copies of (y, p), gradients cleared, each copy seeded
            TX[pt] = t
            for r in ti.static(range(R)):
                O.grad[pt, bb, r] = 1.0
                for i in ti.static(range(n)):
                    X[pt, bb, r, i] = y[i]
                    X.grad[pt, bb, r, i] = 0.0
                for j in ti.static(range(m)):
                    PX[pt, bb, r, j] = p[j]
                    PX.grad[pt, bb, r, j] = 0.0

        @ti.kernel
        def dense_points(sg: nd, tape: nd, ks: nd, p: nd, off: ti.i32, L: ti.i32):
            ti.loop_config(serialize=True)
            for l in range(L):
                row = off + l
                hs, ts = sg[row, 0], sg[row, 1]
                par = ti.cast(sg[row, 2], ti.i32)
                kq, rq, hp = sg[row, 3], sg[row, 4], sg[row, 5]
                for bb in range(B):
                    pv = ti.Vector([p[bb, j] for j in ti.static(range(m))])
                    for q in ti.static(range(s)):
                        th = (kq + 1.0 - c[q]) / rq
                        # w_j(θ) = Σ_r P[j, r] θ^(r+1), Horner form
                        w = [th * (dense[j][0] + th * (dense[j][1] + th * (dense[j][2]
                                                                         + th * dense[j][3])))
                             for j in ti.static(didx)]
                        y = ti.Vector([tape[par, bb, i] + hp * sum(
                            [w[u] * ks[par, didx[u], bb, i] for u in ti.static(range(len(didx)))])
                            for i in ti.static(range(n))])
                        put(l * s + q, bb, y, pv, ts + hs - c[q] * hs)

        @ti.kernel
        def hermite_points(sg: nd, tape: nd, p: nd, off: ti.i32, L: ti.i32):
            ti.loop_config(serialize=True)
            for l in range(L):
                row = off + l
                hs, ts = sg[row, 0], sg[row, 1]
                par = ti.cast(sg[row, 2], ti.i32)
                kq, rq, hp = sg[row, 3], sg[row, 4], sg[row, 5]
                tp = ts - kq * hs                       # the parent step's start
                for bb in range(B):
                    pv = ti.Vector([p[bb, j] for j in ti.static(range(m))])
                    y0 = ti.Vector([tape[par, bb, i] for i in ti.static(range(n))])
                    y1 = ti.Vector([tape[par + 1, bb, i] for i in ti.static(range(n))])
                    f0 = _keep(f(tp, y0, pv), n)
                    f1 = _keep(f(tp + hp, y1, pv), n)
                    for q in ti.static(range(s)):
                        th = (kq + 1.0 - c[q]) / rq
                        u = 1.0 - th
                        h00, h10 = (1.0 + 2.0 * th) * u * u, th * u * u
                        h01, h11 = th * th * (3.0 - 2.0 * th), -th * th * u
                        y = ti.Vector([h00 * y0[i] + h01 * y1[i] + hp * (h10 * f0[i] + h11 * f1[i])
                                       for i in ti.static(range(n))])
                        put(l * s + q, bb, y, pv, ts + hs - c[q] * hs)

        @ti.kernel
        def back_points(sg: nd, ysub: nd, p: nd, err: nd, off: ti.i32, L: ti.i32,
                        atol: real, rtol: real):
            ti.loop_config(serialize=True)
            for bb in range(B):
                pv = ti.Vector([p[bb, j] for j in ti.static(range(m))])
                y = ti.Vector([ysub[off + L, bb, i] for i in ti.static(range(n))])
                for ll in range(L):
                    l = L - 1 - ll
                    row = off + l
                    h = -sg[row, 0]                   # backwards in time
                    t = sg[row, 1] + sg[row, 0]
                    put(l * s, bb, y, pv, t)
                    kk = [_keep(f(t, y, pv), n)]
                    for q in ti.static(range(1, s)):
                        yq = _keep(combs[q](y, h, kk), n)
                        put(l * s + q, bb, yq, pv, t + c[q] * h)
                        kk.append(_keep(f(t + c[q] * h, yq, pv), n))
                    yn = _keep(final(y, h, kk), n)
                    acc = 0.0
                    for i in ti.static(range(n)):
                        est = h * sum([e[j] * kk[j][i] for j in eidx])
                        sc = atol + rtol * ti.max(ti.abs(y[i]), ti.abs(yn[i]))
                        acc += (est / sc) ** 2
                    err[row, bb] += acc
                    for i in ti.static(range(n)):
                        ysub[row, bb, i] = yn[i]
                    y = yn

        def make_evaluate(serial):
            @ti.kernel
            def evaluate(M: ti.i32):
                ti.loop_config(serialize=serial)
                for i, bb, r in ti.ndrange(M, B, R):
                    y = ti.Vector([X[i, bb, r, k] for k in ti.static(range(n))])
                    p = ti.Vector([PX[i, bb, r, j] for j in ti.static(range(m))])
                    v = f(TX[i], y, p)
                    # copy r keeps component r only, so its reverse pass yields row r
                    o = sum([ti.select(r == k, v[k], 0.0) for k in ti.static(range(n))])
                    if ti.static(has_run):
                        o += ti.select(r == n, g(TX[i], y, p), 0.0)
                    O[i, bb, r] = o
            return evaluate

        @ti.kernel
        def sweep(sg: nd, ysub: nd, dw: nd, z: nd, out: nd, err: nd, off: ti.i32, L: ti.i32,
                  obs_first: ti.i32, rtol: ti.f64, atol: ti.f64):
            ti.loop_config(serialize=True)
            for bb in range(B):
                for ll in range(L):
                    l = L - 1 - ll
                    row = off + l
                    hl = sg[row, 0]
                    jo = ti.cast(sg[row, 6], ti.i32)
                    for k in ti.static(range(n)):
                        src = ti.cast(0.0, ti.f64)
                        if jo >= 0:
                            src = 2.0 * dw[1, bb, jo, k] * (ysub[row + 1, bb, k] - dw[0, bb, jo, k])
                        out[row + 1, 0, bb, k] = src
                        z[bb, k] += src
                        out[row + 1, 1, bb, k] = z[bb, k]
                    for q in ti.static(range(s)):
                        pt = l * s + q
                        for k in ti.static(range(n)):            # stage λ in scratch row s
                            v = z[bb, k]
                            for j in ti.static(range(q)):
                                if ti.static(a[q][j] != 0.0):
                                    v += hl * a[q][j] * KS[j, bb, k]
                            KS[s, bb, k] = v
                        # slope: [J | ∂f/∂p]ᵀ λ + [∂g/∂y | ∂g/∂p] from the reverse pass
                        for k in ti.static(range(N)):
                            acc = ti.cast(0.0, ti.f64)
                            if ti.static(has_run):
                                if ti.static(k < n):
                                    acc = X.grad[pt, bb, n, k]
                                else:
                                    acc = PX.grad[pt, bb, n, k - n]
                            for d in ti.static(range(n)):
                                if ti.static(k < n):
                                    acc += X.grad[pt, bb, d, k] * KS[s, bb, d]
                                else:
                                    acc += PX.grad[pt, bb, d, k - n] * KS[s, bb, d]
                            KS[q, bb, k] = acc
                    sq = ti.cast(0.0, ti.f64)
                    for k in ti.static(range(N)):
                        dz, ez = ti.cast(0.0, ti.f64), ti.cast(0.0, ti.f64)
                        for q in ti.static(range(s)):
                            if ti.static(b[q] != 0.0):
                                dz += b[q] * KS[q, bb, k]
                            if ti.static(e[q] != 0.0):
                                ez += e[q] * KS[q, bb, k]
                        new = z[bb, k] + hl * dz
                        sc = atol + rtol * ti.max(ti.abs(z[bb, k]), ti.abs(new))
                        sq += (hl * ez / sc) ** 2
                        z[bb, k] = new
                    err[row, bb] += sq
                if off == 0:
                    for k in ti.static(range(n)):
                        src = ti.cast(0.0, ti.f64)
                        if obs_first >= 0:
                            src = 2.0 * dw[1, bb, obs_first, k] * (ysub[0, bb, k]
                                                                    - dw[0, bb, obs_first, k])
                        out[0, 0, bb, k] = src
                        out[0, 1, bb, k] = z[bb, k]

        self._dense, self._hermite, self._back = dense_points, hermite_points, back_points
        self._sweep = sweep
        self._evaluate_serial, self._evaluate_parallel = make_evaluate(True), make_evaluate(False)

    def run(self, sg, ysub, z, dw, obs_first, params, rtol, atol, points, tape=None, ks=None):
        """One backward walk over the sub-grid ``sg`` (see the class doc). ``points``
        "dense" (``tape`` and ``ks`` of the forward steps) or "hermite" (``tape``):
        ``ysub`` the states at the sub-grid points (only save points are read); "back":
        ``ysub[L]`` the end state, the rest is filled. Returns (z at the sub-grid start
        (B, n + m), out (L + 1, 2, B, n), err² sums (L, B))."""
        self._check_runtime()
        if points == "dense" and not self.dense_ok:
            raise DiffsimError("internal: dense-output stage points need Dopri5's tableau")
        L, s = len(sg), len(self.b)
        z = np.array(z, dtype=np.float64)
        out = np.zeros((L + 1, 2, self.B, self.ode.n))
        err = np.zeros((L, self.B))
        p = np.ascontiguousarray(params, dtype=np.float64)
        e = L
        while e > 0:
            o = max(0, e - self.cap)
            cnt = e - o
            if points == "back":
                self._back(sg, ysub, p, err, o, cnt, atol, rtol)
            elif points == "dense":
                self._dense(sg, tape, ks, p, o, cnt)
            else:
                self._hermite(sg, tape, p, o, cnt)
            par = cnt * s * self.B * self.R >= ADJOINT_PARALLEL_MIN
            ev = self._evaluate_parallel if par else self._evaluate_serial
            ev(cnt * s)
            ev.grad(cnt * s)
            self._sweep(sg, ysub, dw, z, out, err, o, cnt, int(obs_first), float(rtol),
                        float(atol))
            e = o
        return z, out, err


class AdjointStages(runtime.RuntimeBound):
    """States and stage slopes of an explicit RK tableau (``Dopri5``) on a given step
    grid, for the dense output of the continuous adjoint's checkpointed backward pass
    (:class:`AdjointPass`). Forward only (nothing here is differentiated), one launch:
    :meth:`forward` returns the states y_0 .. y_L from ystart over steps (h_k, t_k) and
    every stage slope k_q = f(t_k + c_q h_k, Y_q) (L, s, B, n)."""

    @classmethod
    def get(cls, ode, solver, B):
        return _cached(cls, "adjoint_stages", ode, solver, B)

    def __init__(self, ode, solver, B):
        info = self._bind_runtime()
        self.ode, self.B = ode, int(B)
        self.a = [list(map(float, r)) for r in solver.a]
        self.b, self.c = (list(map(float, v)) for v in (solver.b, solver.c))
        self.np_real = info.numpy_dtype
        self._compile(info.real)

    def _compile(self, real):
        ode, B, n, m = self.ode, self.B, self.ode.n, self.ode.m
        f = ode.rhs
        a, b, c = self.a, self.b, self.c
        s = len(b)
        combs = [_comb(n, a[i]) for i in range(s)]
        final = _comb(n, b)
        nd = ti.types.ndarray()

        @ti.kernel
        def forward(hs: nd, ts: nd, ystart: nd, p: nd, tape: nd, ks: nd):
            L = hs.shape[0]
            ti.loop_config(serialize=True)
            for bb in range(B):
                pv = ti.Vector([p[bb, j] for j in ti.static(range(m))])
                y = ti.Vector([ystart[bb, i] for i in ti.static(range(n))])
                for i in ti.static(range(n)):
                    tape[0, bb, i] = y[i]
                for k in range(L):
                    t, h = ts[k], hs[k]
                    kk = [_keep(f(t, y, pv), n)]
                    for q in ti.static(range(1, s)):
                        kk.append(_keep(f(t + c[q] * h, combs[q](y, h, kk), pv), n))
                    yn = _keep(final(y, h, kk), n)
                    for q in ti.static(range(s)):
                        for i in ti.static(range(n)):
                            ks[k, q, bb, i] = kk[q][i]
                    for i in ti.static(range(n)):
                        tape[k + 1, bb, i] = yn[i]
                    y = yn

        self._forward = forward

    def forward(self, h, t, ystart, params):
        """States (L + 1, B, n) and stage slopes (L, s, B, n) over steps (h, t) (L,)."""
        self._check_runtime()
        r, B, n, L = self.np_real, self.B, self.ode.n, len(h)
        tape, ks = np.zeros((L + 1, B, n), r), np.zeros((L, len(self.b), B, n), r)
        self._forward(np.ascontiguousarray(h, r), np.ascontiguousarray(t, r),
                      np.ascontiguousarray(ystart, r), np.ascontiguousarray(params, r), tape, ks)
        return tape.astype(np.float64), ks.astype(np.float64)
