"""Fields and fused Taichi kernels for one (ODE, solver, batch, capacity).

Layout (B batch members, n states, m parameters, N steps, K segments, J save points):
P (B, m) parameters, Y0 (B, n) initial states, S (K+1, B, n) segment-boundary states
(the checkpoints), H/T (N,) step sizes and start times, OBS (N,) save-point index reached
at the end of each step (-1: none), D/W (B, J, n) data and weights, YS (B, J, n) saved
states, ACC (B,) accumulated observation + running cost, L () the scalar loss (sum over
the batch).

The time loop runs inside ``for b in range(B)`` with the state carried as scalar locals
(taichi-notes 1–4); parameters are re-read from P inside every step (a parameter read
into a local before the inner loop got a wrong reverse-mode gradient, measured). One
launch integrates one segment of at most ``max_fused`` steps; reverse mode calls the
segments' ``.grad`` kernels backwards, so memory is K + 1 stored states plus one
segment's autodiff stack: O(K + N/K).
"""
import math
import warnings

import numpy as np
import taichi as ti

from .. import runtime
from ..errors import DiffsimError


# trace-time helpers (pack, sum) build expressions on purpose; Taichi warns about them
warnings.filterwarnings("ignore", message=".*Calling non-taichi function.*")


class Integration(runtime.RuntimeBound):
    def __init__(self, ode, solver, batch, n_steps, n_save, max_fused=None):
        info = self._bind_runtime()
        real = info.real
        self.ode, self.solver = ode, solver
        self.B, self.N, self.J = int(batch), int(n_steps), max(int(n_save), 1)
        self.max_fused = int(max_fused or runtime.MAX_FUSED_STEPS)
        self.Kcap = math.ceil(self.N / self.max_fused)
        n, m, B, J = ode.n, ode.m, self.B, self.J
        self.np_real = info.numpy_dtype
        kw = dict(needs_grad=True, needs_dual=True)
        self.P = ti.field(real, (B, m), **kw)
        self.Y0 = ti.field(real, (B, n), **kw)
        self.S = ti.field(real, (self.Kcap + 1, B, n), **kw)
        self.ACC = ti.field(real, B, **kw)
        self.L = ti.field(real, (), **kw)
        self.LB = ti.field(real, B, **kw)
        self.YS = ti.field(real, (B, J, n), **kw)
        self.H = ti.field(real, self.N)
        self.T = ti.field(real, self.N)
        self.OBS = ti.field(ti.i32, self.N)
        self.D = ti.field(real, (B, J, n))
        self.W = ti.field(real, (B, J, n))
        self.segs = []
        self._compile()

    @property
    def stored_states(self) -> int:
        """States kept in memory between kernel launches per batch member: K + 1."""
        return self.S.shape[0]

    def _compile(self):
        ode, B, n, m = self.ode, self.B, self.ode.n, self.ode.m
        step = self.solver.make_step(ode)
        f_y0, g_run, phi = ode.y0, ode.running, ode.final
        has_y0, has_run, has_phi = f_y0 is not None, g_run is not None, phi is not None
        P, Y0, S, ACC, L, YS, LB = self.P, self.Y0, self.S, self.ACC, self.L, self.YS, self.LB
        H, T, OBS, D, W = self.H, self.T, self.OBS, self.D, self.W
        Kcap, J = self.Kcap, self.J

        @ti.func
        def pvec(b):
            return ti.Vector([P[b, j] for j in ti.static(range(m))])

        def pack(*a):
            return ti.Vector(list(a[:n]))

        @ti.func
        def obs_term(b, jj, y):
            return sum([W[b, jj, c] * (y[c] - D[b, jj, c]) ** 2 for c in ti.static(range(n))])

        @ti.func
        def start(b, y, obs0):
            for c in ti.static(range(n)):
                S[0, b, c] = y[c]
            if obs0 >= 0:
                ACC[b] += obs_term(b, obs0, y)
                for c in ti.static(range(n)):
                    YS[b, obs0, c] = y[c]

        @ti.kernel
        def launch(obs0: ti.i32, t0: ti.f64):
            for b in range(B):
                if ti.static(has_y0):
                    start(b, f_y0(pvec(b)), obs0)
                else:
                    start(b, ti.Vector([Y0[b, c] for c in ti.static(range(n))]), obs0)

        @ti.kernel
        def segment(k: ti.i32, t0: ti.i32, cnt: ti.i32):
            for b in range(B):
                a0 = S[k, b, 0]
                a1, a2, a3, a4, a5, a6, a7 = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
                if ti.static(n > 1):
                    a1 = S[k, b, 1]
                if ti.static(n > 2):
                    a2 = S[k, b, 2]
                if ti.static(n > 3):
                    a3 = S[k, b, 3]
                if ti.static(n > 4):
                    a4 = S[k, b, 4]
                if ti.static(n > 5):
                    a5 = S[k, b, 5]
                if ti.static(n > 6):
                    a6 = S[k, b, 6]
                if ti.static(n > 7):
                    a7 = S[k, b, 7]
                acc = 0.0
                for i in range(cnt):
                    y = pack(a0, a1, a2, a3, a4, a5, a6, a7)
                    p = pvec(b)
                    t, h, j = T[t0 + i], H[t0 + i], OBS[t0 + i]
                    yn = step(t, y, p, h)
                    jj = ti.max(j, 0)
                    mask = ti.select(j >= 0, 1.0, 0.0)
                    if ti.static(has_run):
                        acc = acc + mask * obs_term(b, jj, yn) + 0.5 * h * (g_run(t, y, p) + g_run(t + h, yn, p))
                    else:
                        acc = acc + mask * obs_term(b, jj, yn)
                    if j >= 0:
                        for c in ti.static(range(n)):
                            YS[b, j, c] = yn[c]
                    a0 = yn[0]
                    if ti.static(n > 1):
                        a1 = yn[1]
                    if ti.static(n > 2):
                        a2 = yn[2]
                    if ti.static(n > 3):
                        a3 = yn[3]
                    if ti.static(n > 4):
                        a4 = yn[4]
                    if ti.static(n > 5):
                        a5 = yn[5]
                    if ti.static(n > 6):
                        a6 = yn[6]
                    if ti.static(n > 7):
                        a7 = yn[7]
                yf = pack(a0, a1, a2, a3, a4, a5, a6, a7)
                for c in ti.static(range(n)):
                    S[k + 1, b, c] = yf[c]
                ACC[b] += acc

        @ti.kernel
        def finish(kK: ti.i32):
            for b in range(B):
                if ti.static(has_phi):
                    y = ti.Vector([S[kK, b, c] for c in ti.static(range(n))])
                    tot = ACC[b] + phi(y, pvec(b))
                    LB[b] = tot
                    L[None] += tot
                else:
                    LB[b] = ACC[b]
                    L[None] += ACC[b]

        @ti.kernel
        def clear():
            L[None] = 0.0
            L.grad[None] = 1.0
            for b in range(B):
                ACC[b] = 0.0
                ACC.grad[b] = 0.0
                LB.grad[b] = 0.0
                for j in ti.static(range(m)):
                    P.grad[b, j] = 0.0
                for c in ti.static(range(n)):
                    Y0.grad[b, c] = 0.0
                for kk in range(Kcap + 1):
                    for c in ti.static(range(n)):
                        S.grad[kk, b, c] = 0.0
                for jj in range(J):
                    for c in ti.static(range(n)):
                        YS.grad[b, jj, c] = 0.0

        self._launch, self._segment, self._finish, self._clear = launch, segment, finish, clear

    # -- inputs ------------------------------------------------------------------------
    def set_grid(self, h, t, obs, obs0=-1):
        """Step sizes h (N,), start times t (N,), save index after each step obs (N,)."""
        self._check_runtime()
        N = len(h)
        if N > self.N:
            raise DiffsimError(f"internal: {N} steps exceed this integration's capacity {self.N}")
        pad = self.N - N
        self.H.from_numpy(np.concatenate([h, np.zeros(pad)]).astype(self.np_real))
        self.T.from_numpy(np.concatenate([t, np.zeros(pad)]).astype(self.np_real))
        self.OBS.from_numpy(np.concatenate([obs, -np.ones(pad)]).astype(np.int32))
        self.n_steps, self.obs0 = N, int(obs0)
        self.segs = runtime.segments(N, self.max_fused)
        self.t0 = float(t[0]) if N else 0.0

    def set_data(self, data, weights):
        self._check_runtime()
        self.D.from_numpy(np.ascontiguousarray(np.broadcast_to(data, self.D.shape), dtype=self.np_real))
        self.W.from_numpy(np.ascontiguousarray(np.broadcast_to(weights, self.W.shape), dtype=self.np_real))

    def set_inputs(self, params, y0):
        self._check_runtime()
        self.P.from_numpy(np.ascontiguousarray(params, dtype=self.np_real))
        self.Y0.from_numpy(np.ascontiguousarray(y0, dtype=self.np_real))

    # -- runs --------------------------------------------------------------------------
    def forward(self) -> float:
        """Integrate every batch member; returns the total loss (sum over the batch)."""
        self._check_runtime()
        self._clear()
        self._run()
        return float(self.L[None])

    def _run(self):
        self._launch(self.obs0, self.t0)
        for k, (t0, cnt) in enumerate(self.segs):
            self._segment(k, t0, cnt)
        self._finish(len(self.segs))

    def backward(self):
        """Reverse sweep after :meth:`forward`: (dL/dP (B, m), dL/dY0 (B, n))."""
        self._check_runtime()
        self._finish.grad(len(self.segs))
        for k in reversed(range(len(self.segs))):
            t0, cnt = self.segs[k]
            self._segment.grad(k, t0, cnt)
        self._launch.grad(self.obs0, self.t0)
        return self.P.grad.to_numpy().astype(np.float64), self.Y0.grad.to_numpy().astype(np.float64)

    def member_losses(self) -> np.ndarray:
        """Loss of each batch member after :meth:`forward`, shape (B,)."""
        return self.LB.to_numpy().astype(np.float64)

    def saved(self) -> np.ndarray:
        return self.YS.to_numpy().astype(np.float64)

    def final_state(self) -> np.ndarray:
        return self.S.to_numpy()[len(self.segs)].astype(np.float64)
