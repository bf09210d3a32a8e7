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
segments' ``.grad`` kernels backwards (diffsim.tape drives both, Fused launch
policy), so memory is K + 1 stored states plus one
segment's autodiff stack: O(K + N/K).

Launch overhead matters at this size (one Lotka–Volterra RK4 step is ~50 ns): a parallel
top-level loop costs ~150 µs per launch on CPU even for one iteration, a serialized one
~20 µs, and ``field.from_numpy``/``to_numpy`` each cost a parallel launch. So batch loops
run serialized below :data:`PARALLEL_MIN` members, inputs and outputs travel through one
kernel with ``ndarray`` arguments each, and the step grid and data are re-uploaded only
when they change.
"""

import numpy as np
from ..backend import ti

from .. import runtime, tape
from ..errors import DiffsimError
from .solvers import state_as_list


#: steps of the grid held in the H/T/OBS fields at once; longer grids are uploaded one
#: window at a time as the segments reach them (20 B per step: 1.3 MB)
WINDOW = 1 << 16
#: longest tape a tape method records in one call (solve.TAPE_STEPS)
TAPE_MAX = 4096

#: batch size from which the batch loop runs in parallel (below it, dispatch costs more
#: than it gains; measured on CPU)
PARALLEL_MIN = 64


class Integration(runtime.RuntimeBound):
    def __init__(self, ode, solver, batch, n_steps, n_save, max_fused=None):
        info = self._bind_runtime()
        real = info.real
        self.ode, self.solver = ode, solver
        self.B, self.N, self.J = int(batch), int(n_steps), max(int(n_save), 1)
        self.max_fused = int(max_fused or runtime.MAX_FUSED_STEPS)
        # the time loop fused per segment of max_fused steps; batch loops serial below
        # PARALLEL_MIN members
        self._policy = tape.Fused(self.max_fused, serial_max_batch=PARALLEL_MIN - 1)
        self.Kcap = self._policy.slots(self.N) - 1
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
        # the step grid is held one window of W steps at a time (memory bounded in N)
        self.W_steps = min(self.N, max(WINDOW, self.max_fused, TAPE_MAX))
        self.H = ti.field(real, self.W_steps)
        self.T = ti.field(real, self.W_steps)
        self.OBS = ti.field(ti.i32, self.W_steps)
        self.D = ti.field(real, (B, J, n))
        self.W = ti.field(real, (B, J, n))
        self.segs = []
        self._compile()
        self._tape = self._make_tape()

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
        serial = self._policy.serial(B)

        @ti.func
        def pvec(b):
            return ti.Vector([P[b, j] for j in ti.static(range(m))])

        as_list = state_as_list()

        def pack(*a):
            # Quadrants: a list of the carried scalars, not a vector (solvers.state_as_list)
            return list(a[:n]) if as_list else ti.Vector(list(a[:n]))

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
            ti.loop_config(serialize=serial)
            for b in range(B):
                if ti.static(has_y0):
                    start(b, f_y0(pvec(b)), obs0)
                else:
                    start(b, ti.Vector([Y0[b, c] for c in ti.static(range(n))]), obs0)

        @ti.kernel
        def segment(k: ti.i32, t0: ti.i32, cnt: ti.i32):
            ti.loop_config(serialize=serial)
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
            ti.loop_config(serialize=serial)
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
        def load(p: ti.types.ndarray(), y0: ti.types.ndarray()):
            # inputs in, loss accumulators and every gradient zeroed, dL/dL = 1
            L[None] = 0.0
            L.grad[None] = 1.0
            ti.loop_config(serialize=serial)
            for b in range(B):
                ACC[b] = 0.0
                ACC.grad[b] = 0.0
                LB.grad[b] = 0.0
                for j in ti.static(range(m)):
                    P[b, j] = p[b, j]
                    P.grad[b, j] = 0.0
                for c in ti.static(range(n)):
                    Y0[b, c] = y0[b, c]
                    Y0.grad[b, c] = 0.0
                for kk in range(Kcap + 1):
                    for c in ti.static(range(n)):
                        S.grad[kk, b, c] = 0.0
                for jj in range(J):
                    for c in ti.static(range(n)):
                        YS.grad[b, jj, c] = 0.0

        @ti.kernel
        def out(kK: ti.i32, lb: ti.types.ndarray(), ys: ti.types.ndarray(), cps: ti.types.ndarray()):
            ti.loop_config(serialize=True)
            for b in range(B):
                lb[b] = LB[b]
                for kk in range(kK + 1):
                    for c in ti.static(range(n)):
                        cps[kk, b, c] = S[kk, b, c]
                for jj in range(J):
                    for c in ti.static(range(n)):
                        ys[b, jj, c] = YS[b, jj, c]

        @ti.kernel
        def gout(gp: ti.types.ndarray(), gy: ti.types.ndarray()):
            ti.loop_config(serialize=True)
            for b in range(B):
                for j in ti.static(range(m)):
                    gp[b, j] = P.grad[b, j]
                for c in ti.static(range(n)):
                    gy[b, c] = Y0.grad[b, c]

        @ti.kernel
        def record(i0: ti.i32, cnt: ti.i32, ystart: ti.types.ndarray(), tape: ti.types.ndarray()):
            # forward only: every state from step i0 to i0 + cnt (tape[0] = ystart)
            ti.loop_config(serialize=serial)
            for b in range(B):
                y = ti.Vector([ystart[b, c] for c in ti.static(range(n))])
                for c in ti.static(range(n)):
                    tape[0, b, c] = y[c]
                for i in range(cnt):
                    y = step(T[i0 + i], y, pvec(b), H[i0 + i])
                    for c in ti.static(range(n)):
                        tape[i + 1, b, c] = y[c]

        f = ode.rhs

        @ti.kernel
        def backsolve(i0: ti.i32, cnt: ti.i32, yend: ti.types.ndarray(),
                      stages: ti.types.ndarray(), tape: ti.types.ndarray()):
            # classic RK4 backwards in time from the state after step i0 + cnt - 1 down to
            # step i0, recording the four stage states of each step (stage q at time
            # t_{i+1} - c_q h, c = 0, 1/2, 1/2, 1): the continuous adjoint's backsolve
            ti.loop_config(serialize=serial)
            for b in range(B):
                y = ti.Vector([yend[b, c] for c in ti.static(range(n))])
                for c in ti.static(range(n)):
                    tape[cnt, b, c] = y[c]
                for ii in range(cnt):
                    i = cnt - 1 - ii
                    h, t1 = H[i0 + i], T[i0 + i] + H[i0 + i]
                    p = pvec(b)
                    k1 = f(t1, y, p)
                    y2 = ti.Vector([y[c] - 0.5 * h * k1[c] for c in ti.static(range(n))])
                    k2 = f(t1 - 0.5 * h, y2, p)
                    y3 = ti.Vector([y[c] - 0.5 * h * k2[c] for c in ti.static(range(n))])
                    k3 = f(t1 - 0.5 * h, y3, p)
                    y4 = ti.Vector([y[c] - h * k3[c] for c in ti.static(range(n))])
                    k4 = f(t1 - h, y4, p)
                    for c in ti.static(range(n)):
                        stages[i, 0, b, c] = y[c]
                        stages[i, 1, b, c] = y2[c]
                        stages[i, 2, b, c] = y3[c]
                        stages[i, 3, b, c] = y4[c]
                    y = ti.Vector([y[c] - h / 6.0 * (k1[c] + 2.0 * k2[c] + 2.0 * k3[c] + k4[c])
                                   for c in ti.static(range(n))])
                    for c in ti.static(range(n)):
                        tape[i, b, c] = y[c]

        self._launch, self._segment, self._finish = launch, segment, finish
        self._load, self._out, self._gout, self._record = load, out, gout, record
        self._backsolve = backsolve

        @ti.kernel
        def clear_grads():
            # what load zeroes of the gradients, for a reverse sweep that follows another
            L.grad[None] = 1.0
            ti.loop_config(serialize=serial)
            for b in range(B):
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
        self._clear_grads = clear_grads

    def _make_tape(self):
        """The driver of the time loop (diffsim.tape): these kernels in its contract.
        load (prepare) uploads the inputs and zeroes every gradient; the segment kernel
        reads the step grid from the window that _window makes resident."""
        launch, gout = self._launch, self._gout

        def read_grads():
            gp = np.zeros((self.B, self.ode.m), self.np_real)
            gy = np.zeros((self.B, self.ode.n), self.np_real)
            gout(gp, gy)
            return gp.astype(np.float64), gy.astype(np.float64)
        return tape.Tape(tape.Kernels(
            start=lambda: launch(self.obs0, self.t0), segment=self._segment, finish=self._finish,
            segment_args=lambda p, s: (p.k, self._window(p.t0, p.n, backward=s.mode == "reverse"), p.n),
            start_grad=lambda: launch.grad(self.obs0, self.t0),
            prepare=lambda: self._load(self.params, self.y0), prepare_clears_grads=True,
            clear_grads=self._clear_grads, read_grads=read_grads),
            self._policy, self.N)

    # -- inputs ------------------------------------------------------------------------
    def set_grid(self, steps):
        """The step grid (a :class:`~diffsim.ode.steps.StepGrid` of N ≤ capacity steps);
        uploaded to the fields one window at a time by :meth:`_window`."""
        self._check_runtime()
        N = steps.N
        if N > self.N:
            raise DiffsimError(f"internal: {N} steps exceed this integration's capacity {self.N}")
        if getattr(self, "steps", None) is None or self.steps.key != steps.key:
            self.steps = steps
            self._win = None
        self.n_steps, self.obs0 = N, int(steps.obs0)
        self._tape.set_horizon(N)
        self.segs = self._tape.segs
        self.t0 = float(steps.t0)

    def _window(self, i0, cnt, backward=False):
        """Make steps i0 .. i0 + cnt - 1 resident in H/T/OBS; returns i0's field index.
        A new window starts at i0 going forward and ends at i0 + cnt going backward."""
        W, N = self.W_steps, self.n_steps
        win = self._win
        if win is None or not (win <= i0 and i0 + cnt <= win + W):
            ws = max(0, i0 + cnt - W) if backward else i0
            ws = max(0, min(ws, N - W))
            L = min(W, N - ws)
            pad = W - L
            sl = slice(ws, ws + L)
            self.H.from_numpy(np.concatenate([self.steps.h[sl], np.zeros(pad)]).astype(self.np_real))
            self.T.from_numpy(np.concatenate([self.steps.t[sl], np.zeros(pad)]).astype(self.np_real))
            self.OBS.from_numpy(np.concatenate([self.steps.obs[sl], -np.ones(pad)]).astype(np.int32))
            self._win = win = ws
        return i0 - win

    def set_data(self, data, weights):
        self._check_runtime()
        d = np.ascontiguousarray(np.broadcast_to(data, self.D.shape), dtype=self.np_real)
        w = np.ascontiguousarray(np.broadcast_to(weights, self.W.shape), dtype=self.np_real)
        old = getattr(self, "_data", None)
        if old is None or not (np.array_equal(old[0], d) and np.array_equal(old[1], w)):
            self.D.from_numpy(d)
            self.W.from_numpy(w)
            self._data = (d, w)
            self._tape.inputs_changed()
        self.data, self.weights = self._data

    def set_inputs(self, params, y0):
        self._check_runtime()
        self.params = np.ascontiguousarray(params, dtype=self.np_real)
        self.y0 = np.ascontiguousarray(y0, dtype=self.np_real)
        self._tape.inputs_changed()

    # -- runs --------------------------------------------------------------------------
    def forward(self) -> float:
        """Integrate every batch member; returns the total loss (sum over the batch).
        Member losses, saved states and final states are then in :attr:`lb`,
        :attr:`ys` and :attr:`checkpoints` (segment-boundary states, last = final)."""
        self._check_runtime()
        self._tape.forward((len(self.segs),))
        r = self.np_real
        self.lb, self.ys = np.zeros(self.B, r), np.zeros((self.B, self.J, self.ode.n), r)
        K = len(self.segs)
        self.checkpoints = np.zeros((K + 1, self.B, self.ode.n), r)
        self._out(K, self.lb, self.ys, self.checkpoints)
        return float(self.lb.astype(np.float64).sum())

    def backward(self):
        """Reverse sweep after :meth:`forward`: (dL/dP (B, m), dL/dY0 (B, n)); refuses
        (DiffsimError) without a forward pass since the last set_inputs/set_grid/set_data."""
        self._check_runtime()
        return self._tape.backward((len(self.segs),))

    def record(self, i0, cnt, ystart) -> np.ndarray:
        """Every state of steps i0 .. i0 + cnt from ystart (B, n): (cnt + 1, B, n)."""
        tape = np.zeros((cnt + 1, self.B, self.ode.n), self.np_real)
        off = self._window(int(i0), int(cnt))
        self._record(off, int(cnt), np.ascontiguousarray(ystart, dtype=self.np_real), tape)
        return tape.astype(np.float64)

    def backsolve(self, i0, cnt, yend):
        """RK4 backwards over steps i0 .. i0 + cnt from yend (B, n): stage states
        (cnt, 4, B, n) and states (cnt + 1, B, n) (tape[cnt] = yend)."""
        r, B, n = self.np_real, self.B, self.ode.n
        stages, tape = np.zeros((cnt, 4, B, n), r), np.zeros((cnt + 1, B, n), r)
        off = self._window(int(i0), int(cnt), backward=True)
        self._backsolve(off, int(cnt), np.ascontiguousarray(yend, dtype=r), stages, tape)
        return stages.astype(np.float64), tape.astype(np.float64)

    def member_losses(self) -> np.ndarray:
        """Loss of each batch member after :meth:`forward`, shape (B,)."""
        return self.lb.astype(np.float64)

    def saved(self) -> np.ndarray:
        return self.ys.astype(np.float64)

    def final_state(self) -> np.ndarray:
        return self.checkpoints[-1].astype(np.float64)
