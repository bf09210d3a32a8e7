"""Values and Jacobians of a small vector function at many points, by Taichi reverse mode.

    jac = PointJacobian(fn, n, m, R, B)        # fn: @ti.func (t, y, p, h) -> ti.Vector(R)
    v, jy, jp = jac(ys, ts, hs, ps)            # ys (M, B, n), ts/hs (M,), ps (B, m)
    # v (M, B, R) = fn(ts[i], ys[i, b], ps[b], hs[i]); jy (M, B, R, n) = ∂v/∂y; jp (M, B, R, m)

Every gradient method of :mod:`diffsim.ode` is built from such Jacobians: of one solver
step (discrete and forward methods), of the right-hand side f (continuous adjoint,
implicit-function-theorem gradients of implicit steps), of the running cost, of the final
cost and of y0(p). Each point is copied R times, copy r is seeded with dL/dv_r = 1, and
one reverse launch returns all R rows of all M Jacobians. The kernel is straight-line
code (no time loop), so Taichi needs no autodiff stack and compiles it in seconds; the
time recursion runs elsewhere, forward-only (taichi-notes: reverse mode through fused
time loops compiled for minutes and needed a fixed stack size).
"""
import numpy as np
from ..backend import ti

from .. import runtime

#: points per launch (a chunk); larger inputs are processed chunk by chunk
CHUNK = 4096
#: copies (points × rows × batch) from which the loop runs in parallel
PARALLEL_MIN = 4096


class PointJacobian(runtime.RuntimeBound):
    """fn(t, y, p, h) -> ti.Vector(R) and its Jacobians w.r.t. y (n) and p (m)."""

    def __init__(self, fn, n, m, R, B, chunk=CHUNK):
        info = self._bind_runtime()
        self.fn, self.n, self.m, self.R, self.B = fn, n, m, R, B
        self.cap = int(chunk)
        self.np_real = info.numpy_dtype
        real, cap = info.real, self.cap
        self.X = ti.field(real, (cap, B, R, n), needs_grad=True)
        self.PX = ti.field(real, (cap, B, R, m), needs_grad=True)
        self.O = ti.field(real, (cap, B, R), needs_grad=True)
        self.TX = ti.field(real, cap)
        self.HX = ti.field(real, cap)
        self._compile()

    def _compile(self):
        fn, n, m, R, B = self.fn, self.n, self.m, self.R, self.B
        X, PX, O, TX, HX = self.X, self.PX, self.O, self.TX, self.HX

        @ti.kernel
        def load(M: ti.i32, ys: ti.types.ndarray(), ts: ti.types.ndarray(),
                 hs: ti.types.ndarray(), ps: ti.types.ndarray()):
            ti.loop_config(serialize=True)
            for i in range(M):
                TX[i] = ts[i]
                HX[i] = hs[i]
                for b in range(B):
                    for r in ti.static(range(R)):
                        O.grad[i, b, r] = 1.0
                        for c in ti.static(range(n)):
                            X[i, b, r, c] = ys[i, b, c]
                            X.grad[i, b, r, c] = 0.0
                        for j in ti.static(range(m)):
                            PX[i, b, r, j] = ps[b, j]
                            PX.grad[i, b, r, j] = 0.0

        def make_evaluate(serial):
            @ti.kernel
            def evaluate(M: ti.i32):
                ti.loop_config(serialize=serial)
                for i, b, r in ti.ndrange(M, B, R):
                    y = ti.Vector([X[i, b, r, c] for c in ti.static(range(n))])
                    p = ti.Vector([PX[i, b, r, j] for j in ti.static(range(m))])
                    v = fn(TX[i], y, p, HX[i])
                    # copy r keeps component r only, so its reverse pass yields row r
                    O[i, b, r] = sum([ti.select(r == c, v[c], 0.0) for c in ti.static(range(R))])
            return evaluate

        # two compiled variants: a parallel launch costs ~150 µs of dispatch on CPU, more
        # than a serial loop over a few thousand small points
        self._evaluate_serial, self._evaluate_parallel = make_evaluate(True), make_evaluate(False)

        @ti.kernel
        def store(M: ti.i32, v: ti.types.ndarray(), jy: ti.types.ndarray(), jp: ti.types.ndarray()):
            ti.loop_config(serialize=True)
            for i in range(M):
                for b in range(B):
                    for r in ti.static(range(R)):
                        v[i, b, r] = O[i, b, r]
                        for c in ti.static(range(n)):
                            jy[i, b, r, c] = X.grad[i, b, r, c]
                        for j in ti.static(range(m)):
                            jp[i, b, r, j] = PX.grad[i, b, r, j]

        self._load, self._store = load, store

    def __call__(self, ys, ts, hs, ps):
        """Values (M, B, R) and Jacobians (M, B, R, n), (M, B, R, m) at M points."""
        self._check_runtime()
        r = self.np_real
        ys = np.ascontiguousarray(ys, dtype=r)
        ts = np.ascontiguousarray(np.broadcast_to(ts, ys.shape[:1]), dtype=r)
        hs = np.ascontiguousarray(np.broadcast_to(hs, ys.shape[:1]), dtype=r)
        ps = np.ascontiguousarray(ps, dtype=r)
        M, B, R, n, m = ys.shape[0], self.B, self.R, self.n, self.m
        v, jy, jp = np.zeros((M, B, R), r), np.zeros((M, B, R, n), r), np.zeros((M, B, R, m), r)
        for a in range(0, M, self.cap):
            e = min(M, a + self.cap)
            cv, cy, cp = v[a:e], jy[a:e], jp[a:e]
            self._load(e - a, ys[a:e], ts[a:e], hs[a:e], ps)
            ev = self._evaluate_serial if (e - a) * B * R < PARALLEL_MIN else self._evaluate_parallel
            ev(e - a)
            ev.grad(e - a)
            self._store(e - a, cv, cy, cp)
        if r != np.float64:
            return v.astype(np.float64), jy.astype(np.float64), jp.astype(np.float64)
        return v, jy, jp
