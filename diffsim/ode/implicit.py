"""Backward Euler on a fixed step grid, the whole time loop in one Taichi kernel.

    tape = implicit_tape(ode, BackwardEuler(), h, t, y0, params)   # (N + 1, B, n)

Each step solves y_{k+1} = y_k + h_k f(t_k + h_k, y_{k+1}, p) by Newton's method,
started from the explicit Euler predictor y_k + h_k f(t_k, y_k, p). The Newton matrix
I - h_k ∂f/∂y is built by central differences of f (step ``FD_REL``·max(|z_i|, 1)); it
only sets the convergence rate: convergence is declared on the update, so the returned
states solve the backward Euler equations to the Newton tolerance whatever the
Jacobian's error. The n×n system (n ≤ MAX_STATE) is solved by Gaussian elimination with
partial pivoting over a local matrix: unrolled with ``ti.static`` (Jacobian columns too)
for n ≤ ``UNROLL_MAX_STATE``, runtime loops with dynamic indexing above it (the unrolled
kernel took ~25 s to compile at n = 8).

One kernel launch integrates every batch member over every step (forward only, no
autodiff): ``for b in range(B)`` on the outside, serialized for small batches (a
parallel launch costs ~150 µs on a small CPU), parallel from ``PARALLEL_MIN_BATCH``
members up; the time loop and the Newton loop run inside it. Newton failure is reported
per member in a small i32 status field and raised in Python as a
:class:`~diffsim.errors.SimulationError` naming the step time and the member.

Fields (per ODE, batch size B and step capacity) are cached on ``ode._cache`` under a key
that includes the runtime generation, so a re-initialised runtime builds new ones. The
inputs reach the kernel as numpy arguments and are staged into those fields by the same
launch, and the kernel writes the tape straight into a numpy output argument and returns
the number of failed members: one launch per call (from_numpy/to_numpy would each be a
launch of their own, ~60-90 µs apiece here); STATUS is read only after a failure.
"""
import numpy as np
from ..backend import ti

from .. import runtime
from ..errors import DiffsimError, SimulationError
from .solvers import quiet_trace

#: batch size from which the batch loop runs in parallel (below it: serialized)
PARALLEL_MIN_BATCH = 64
#: largest n_state for which the Jacobian columns and the elimination are unrolled with
#: ti.static (fastest code); above it they are runtime loops over a dynamically indexed
#: local matrix. Measured (B = 32, 1,000 steps, dense nonlinear f, loaded 2-core CPU):
#: n = 4 unrolled 1.7-2.2 s compile / 15 ms run, loops 1.6 s / 24 ms; n = 8 unrolled
#: 25 s compile / 56 ms run, loops 2.6 s / 100 ms.
UNROLL_MAX_STATE = 4
#: relative step of the central-difference Jacobian: FD_REL·max(|z_i|, 1) (float64 runtime)
FD_REL = 1e-7
#: the same for a float32 runtime (1e-7 is below float32 resolution)
FD_REL_F32 = 1e-3

#: status codes written by the kernel, per batch member
OK, NO_CONVERGENCE, SINGULAR, NOT_FINITE = 0, 1, 2, 3

_CACHE_TAG = "implicit_tape"


def _capacity(N):
    """Step capacity for N steps: the next power of two (at least 16), so that runs with
    nearby step counts share one set of fields and one compiled kernel."""
    cap = 16
    while cap < N:
        cap *= 2
    return cap


def _tape_runner(ode, B, N):
    """The cached :class:`ImplicitTape` for (ode, B, capacity ≥ N, runtime generation)."""
    gen = runtime.current().generation
    cap = _capacity(N)
    key = (_CACHE_TAG, int(B), cap, gen)
    tape = ode._cache.get(key)
    if tape is None:
        # drop entries of older runtimes: their fields are gone (taichi-notes 5)
        for k in [k for k in ode._cache if isinstance(k, tuple) and k and k[0] == _CACHE_TAG
                  and k[-1] != gen]:
            del ode._cache[k]
        tape = ImplicitTape(ode, B, cap)
        ode._cache[key] = tape
    return tape


class ImplicitTape(runtime.RuntimeBound):
    """Fields and the fused backward Euler kernel for one (ODE, batch size, capacity).

    Fields: P (B, m) parameters, Y0 (B, n) initial states, H / T (cap,) step sizes and
    start times (staged from the kernel's numpy arguments), STATUS (B, 3) i32 per
    member: (code, failing step, Newton iterations of the last step attempted), NFAIL ()
    the number of failed members. The tape is written straight into a numpy array passed
    to the kernel (one copy, no tape field).
    """

    def __init__(self, ode, batch, capacity):
        info = self._bind_runtime()
        self.ode, self.B, self.cap = ode, int(batch), int(capacity)
        real = info.real
        self.P = ti.field(real, (self.B, ode.m))
        self.Y0 = ti.field(real, (self.B, ode.n))
        self.H = ti.field(real, self.cap)
        self.T = ti.field(real, self.cap)
        self.STATUS = ti.field(ti.i32, (self.B, 3))
        self.NFAIL = ti.field(ti.i32, ())
        self._compile(info)

    def _compile(self, info):
        ode, B = self.ode, self.B
        f, n, m = ode.rhs, ode.n, ode.m
        P, Y0, H, T, STATUS, NFAIL = self.P, self.Y0, self.H, self.T, self.STATUS, self.NFAIL
        f64, real = info.precision == "f64", info.real
        fd_rel = FD_REL if f64 else FD_REL_F32
        eps = float(np.finfo(np.float64 if f64 else np.float32).eps)
        serial = B < PARALLEL_MIN_BATCH
        unrolled = n <= UNROLL_MAX_STATE

        @ti.func
        def finite(x):
            # bit test: immune to fast-math folding of NaN comparisons
            ok = True
            if ti.static(f64):
                hi = ti.cast(ti.bit_cast(x, ti.u64) >> 32, ti.u32) & ti.u32(0x7FFFFFFF)
                ok = hi < ti.u32(0x7FF00000)
            else:
                ok = (ti.bit_cast(x, ti.u32) & ti.u32(0x7FFFFFFF)) < ti.u32(0x7F800000)
            return ok

        @ti.func
        def all_finite(v):
            ok = True
            for i in ti.static(range(n)):
                if not finite(v[i]):
                    ok = False
            return ok

        @ti.func
        def fd_column(tn, h, z, p, j: ti.template()):
            """Column j of I - h ∂f/∂y at z by central differences (j static)."""
            e = fd_rel * ti.max(ti.abs(z[j]), 1.0)
            zp = ti.Vector([z[i] + e if i == j else z[i] for i in ti.static(range(n))])
            zm = ti.Vector([z[i] - e if i == j else z[i] for i in ti.static(range(n))])
            fp = f(tn, zp, p)
            fm = f(tn, zm, p)
            s = h / (zp[j] - zm[j])          # the step actually taken (after rounding)
            return ti.Vector([(1.0 if i == j else 0.0) - s * (fp[i] - fm[i])
                              for i in ti.static(range(n))])

        @ti.func
        def newton_matrix(tn, h, z, p):
            """A = I - h ∂f/∂y at z, by central differences of f."""
            A = ti.Matrix([[0.0 for _ in ti.static(range(n))] for _ in ti.static(range(n))])
            if ti.static(unrolled):
                cols = [fd_column(tn, h, z, p, j) for j in ti.static(range(n))]
                A = ti.Matrix([[cols[j][i] for j in ti.static(range(n))]
                               for i in ti.static(range(n))])
            else:
                # a runtime loop over the columns (dynamic index): f inlined twice, not 2n times
                for j in range(n):
                    e = fd_rel * ti.max(ti.abs(z[j]), 1.0)
                    zp = z
                    zm = z
                    zp[j] = z[j] + e
                    zm[j] = z[j] - e
                    fp = f(tn, zp, p)
                    fm = f(tn, zm, p)
                    s = h / (zp[j] - zm[j])
                    for i in ti.static(range(n)):
                        A[i, j] = ti.select(i == j, 1.0, 0.0) - s * (fp[i] - fm[i])
            return A

        @ti.func
        def lu_static(A, r, thresh):
            """Gaussian elimination with partial pivoting, unrolled with ti.static over the
            local matrix (row swaps as selects: no dynamic indexing, all in registers)."""
            ok = True
            for k in ti.static(range(n)):
                piv = k
                best = ti.abs(A[k, k])
                for i in ti.static(range(k + 1, n)):
                    if ti.abs(A[i, k]) > best:
                        best = ti.abs(A[i, k])
                        piv = i
                if best <= thresh:
                    ok = False
                for i in ti.static(range(k + 1, n)):
                    sw = piv == i
                    for c in ti.static(range(k, n)):
                        akc = A[k, c]
                        aic = A[i, c]
                        A[k, c] = ti.select(sw, aic, akc)
                        A[i, c] = ti.select(sw, akc, aic)
                    rk = r[k]
                    ri = r[i]
                    r[k] = ti.select(sw, ri, rk)
                    r[i] = ti.select(sw, rk, ri)
                d = ti.select(best > thresh, A[k, k], 1.0)
                for i in ti.static(range(k + 1, n)):
                    fac = A[i, k] / d
                    for c in ti.static(range(k + 1, n)):
                        A[i, c] = A[i, c] - fac * A[k, c]
                    r[i] = r[i] - fac * r[k]
            x = ti.Vector([0.0 for _ in ti.static(range(n))])
            for k in ti.static(range(n - 1, -1, -1)):
                s = r[k]
                for c in ti.static(range(k + 1, n)):
                    s = s - A[k, c] * x[c]
                x[k] = s / ti.select(ti.abs(A[k, k]) > thresh, A[k, k], 1.0)
            return x, ok

        @ti.func
        def lu_loops(A, r, thresh):
            """The same elimination with runtime loops and dynamic indexing (large n)."""
            ok = True
            for k in range(n):
                piv = k
                best = ti.abs(A[k, k])
                for i in range(k + 1, n):
                    if ti.abs(A[i, k]) > best:
                        best = ti.abs(A[i, k])
                        piv = i
                if best <= thresh:
                    ok = False
                for c in range(k, n):                # swap rows k and piv
                    tmp = A[k, c]
                    A[k, c] = A[piv, c]
                    A[piv, c] = tmp
                tmp = r[k]
                r[k] = r[piv]
                r[piv] = tmp
                d = ti.select(best > thresh, A[k, k], 1.0)
                for i in range(k + 1, n):
                    fac = A[i, k] / d
                    for c in range(k + 1, n):
                        A[i, c] = A[i, c] - fac * A[k, c]
                    r[i] = r[i] - fac * r[k]
            x = ti.Vector([0.0 for _ in ti.static(range(n))])
            for kk in range(n):
                k = n - 1 - kk
                s = r[k]
                for c in range(k + 1, n):
                    s = s - A[k, c] * x[c]
                x[k] = s / ti.select(ti.abs(A[k, k]) > thresh, A[k, k], 1.0)
            return x, ok

        @ti.func
        def lu_solve(A, r):
            """x with A x = r; (x, ok), ok False when a pivot is below n·eps·max|A|
            (singular to working precision) or A holds NaN/inf."""
            anorm = 0.0
            for i in ti.static(range(n)):
                for j in ti.static(range(n)):
                    anorm = ti.max(anorm, ti.abs(A[i, j]))
            thresh = n * eps * anorm
            x = ti.Vector([0.0 for _ in ti.static(range(n))])
            ok = True
            if ti.static(unrolled):
                x, ok = lu_static(A, r, thresh)
            else:
                x, ok = lu_loops(A, r, thresh)
            return x, ok and anorm > 0.0 and finite(anorm)

        @ti.kernel
        def integrate(N: ti.i32, tol: ti.f64, max_newton: ti.i32,
                      h_in: ti.types.ndarray(dtype=ti.f64, ndim=1),
                      t_in: ti.types.ndarray(dtype=ti.f64, ndim=1),
                      p_in: ti.types.ndarray(dtype=ti.f64, ndim=2),
                      y0_in: ti.types.ndarray(dtype=ti.f64, ndim=2),
                      out: ti.types.ndarray(dtype=ti.f64, ndim=3)) -> ti.i32:
            # stage the inputs in the cached fields (serial: a parallel dispatch of these
            # tiny loops would cost more than the copy)
            NFAIL[None] = 0
            ti.loop_config(serialize=True)
            for k in range(N):
                H[k] = ti.cast(h_in[k], real)
                T[k] = ti.cast(t_in[k], real)
            ti.loop_config(serialize=True)
            for b in range(B):
                for j in ti.static(range(m)):
                    P[b, j] = ti.cast(p_in[b, j], real)
                for i in ti.static(range(n)):
                    Y0[b, i] = ti.cast(y0_in[b, i], real)
            ti.loop_config(serialize=serial)
            for b in range(B):
                p = ti.Vector([P[b, j] for j in ti.static(range(m))])
                y = ti.Vector([Y0[b, i] for i in ti.static(range(n))])
                for i in ti.static(range(n)):
                    out[0, b, i] = y[i]
                code, fail_step, iters = OK, -1, 0
                k = 0
                while k < N and code == OK:
                    tk, h = T[k], H[k]
                    tn = tk + h
                    f0 = f(tk, y, p)
                    z = ti.Vector([y[i] + h * f0[i] for i in ti.static(range(n))])
                    if not all_finite(z):
                        code = NOT_FINITE
                    iters = 0
                    done = False
                    while code == OK and not done:
                        if iters >= max_newton:
                            code = NO_CONVERGENCE
                        else:
                            fz = f(tn, z, p)
                            r = ti.Vector([y[i] + h * fz[i] - z[i] for i in ti.static(range(n))])
                            A = newton_matrix(tn, h, z, p)
                            dz, ok = lu_solve(A, r)
                            iters += 1
                            if not ok:
                                code = SINGULAR
                            else:
                                z = ti.Vector([z[i] + dz[i] for i in ti.static(range(n))])
                                upd, zmax = 0.0, 1.0
                                for i in ti.static(range(n)):
                                    upd = ti.max(upd, ti.abs(dz[i]))
                                    zmax = ti.max(zmax, ti.abs(z[i]))
                                if not all_finite(z) or not finite(upd):
                                    code = NOT_FINITE
                                elif upd <= tol * zmax:
                                    done = True
                    if code == OK:
                        y = z
                        for i in ti.static(range(n)):
                            out[k + 1, b, i] = y[i]
                        k += 1
                    else:
                        fail_step = k
                STATUS[b, 0] = code
                STATUS[b, 1] = fail_step
                STATUS[b, 2] = iters
                if code != OK:
                    ti.atomic_add(NFAIL[None], 1)
            return NFAIL[None]

        self._integrate = integrate

    def run(self, h, t, y0, params, tol, max_newton):
        """Integrate; returns (tape (N + 1, B, n) float64, status): status is None when
        every member succeeded, else the (B, 3) int32 STATUS array."""
        self._check_runtime()
        N = len(h)
        if N > self.cap:
            raise DiffsimError(f"internal: {N} steps exceed this tape's capacity {self.cap}")
        c64 = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
        out = np.empty((N + 1, self.B, self.ode.n), dtype=np.float64)
        failed = self._integrate(N, float(tol), int(max_newton), c64(h), c64(t), c64(params),
                                 c64(y0), out)
        status = self.STATUS.to_numpy() if failed else None
        return out, status


def _as_2d(a, width, what):
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != width:
        raise DiffsimError(f"{what} must have shape ({width},) or (B, {width}), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise DiffsimError(f"{what} contains NaN or inf: {a.tolist()}")
    return a


def implicit_tape(ode, solver, h, t, y0, params) -> np.ndarray:
    """Backward Euler states on a step grid, every batch member in one kernel launch.

    ode: an :class:`~diffsim.ode.ODE`; solver: a :class:`~diffsim.ode.BackwardEuler`
    (its ``tol``: Newton stops when max|Δz| ≤ tol·max(1, max|z|); ``max_newton``: most
    Newton iterations per step). h (N,): step sizes; t (N,): step start times (time
    units of the ODE). y0 (B, n) or (n,), params (B, m) or (m,), float64 (a single row
    is broadcast to the other's batch size). On a float32 runtime tol is raised to at
    least 8·eps(float32); the tape is float64 either way.
    Returns the tape (N + 1, B, n) float64: tape[0] = y0, tape[k + 1] the state at
    t[k] + h[k]. Raises SimulationError naming the step time and batch member when
    Newton's method fails (no convergence, singular Newton matrix, NaN/inf).
    """
    tol = float(getattr(solver, "tol", 0.0))
    max_newton = getattr(solver, "max_newton", 0)
    if not (np.isfinite(tol) and tol > 0):
        raise DiffsimError(f"{solver!r}: the Newton tolerance tol must be a positive number, "
                           f"got {tol}")
    if not (isinstance(max_newton, (int, np.integer)) and max_newton >= 1):
        raise DiffsimError(f"{solver!r}: max_newton must be an integer ≥ 1, got {max_newton!r}")
    h = np.asarray(h, dtype=np.float64).reshape(-1)
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    if h.shape != t.shape:
        raise DiffsimError(f"h and t must both have shape (N,), got {h.shape} and {t.shape}")
    if not (np.all(np.isfinite(h)) and np.all(np.isfinite(t))):
        raise DiffsimError("the step sizes h and start times t must be finite numbers")
    if np.any(h <= 0):
        raise DiffsimError(f"step sizes must be positive, got h[{int(np.argmax(h <= 0))}] = "
                           f"{h[np.argmax(h <= 0)]}")
    y0 = _as_2d(y0, ode.n, "y0")
    params = _as_2d(params, ode.m, "params")
    B = max(y0.shape[0], params.shape[0])
    if y0.shape[0] not in (1, B) or params.shape[0] not in (1, B):
        raise DiffsimError(f"y0 {y0.shape} and params {params.shape} disagree on the batch size")
    y0 = np.broadcast_to(y0, (B, ode.n)).copy()
    params = np.broadcast_to(params, (B, ode.m)).copy()
    N = len(h)
    if N == 0:
        return y0[None].copy()
    if runtime.current().precision == "f32":
        tol = max(tol, 8 * float(np.finfo(np.float32).eps))
    ode.check()
    with quiet_trace():
        runner = _tape_runner(ode, B, N)
        tape, status = runner.run(h, t, y0, params, tol, int(max_newton))
    if status is not None:
        bad = np.nonzero(status[:, 0] != OK)[0]
        # the failure earliest in time (lowest step, then lowest member)
        b = int(min(bad, key=lambda i: (status[i, 1], i)))
        code, k, iters = (int(v) for v in status[b])
        why = {NO_CONVERGENCE: f"Newton's method did not converge in {max_newton} "
                               f"iteration{'s' if max_newton > 1 else ''} "
                               f"(tol={solver.tol:g})",
               SINGULAR: f"the Newton matrix I - h·∂f/∂y was singular (iteration {iters})",
               NOT_FINITE: ("the explicit Euler predictor was NaN or inf" if iters == 0 else
                            f"the state became NaN or inf (Newton iteration {iters})")}[code]
        others = f"; {len(bad) - 1} other member(s) failed too" if len(bad) > 1 else ""
        raise SimulationError(
            f"backward Euler failed in {ode.name} at step {k} (t = {t[k]:g} → {t[k] + h[k]:g}, "
            f"dt = {h[k]:g}) for batch member {b} (params {params[b].tolist()}): {why}"
            f"{others}. Try a smaller dt, or raise max_newton / loosen tol.")
    return tape
