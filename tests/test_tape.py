"""The tape (diffsim.tape) and a complete small system written only against its contract.

``Decay``: B independent exponential decays dx/dt = -k·x, explicit Euler with step h:
x_{t+1} = (1 - k·h)·x_t, so x_N = x0·(1 - k·h)^N exactly, and the loss
L = Σ_b ½·w_b·x_b(N)² has the closed-form gradient
dL/dk_b = -w_b·x_b(N)·x0_b·N·h·(1 - k_b·h)^(N-1),  dL/dx0_b = w_b·x_b(N)·(1 - k_b·h)^N.
It runs under both launch policies: Fused (the time loop inside the kernel, a scalar local
on the autodiff stack, checkpoints at segment boundaries) and Stepped (one launch per
chunk of steps, every step's state in a field). docs/architecture.md walks through it.
"""
import numpy as np
import pytest

from diffsim import tape
from diffsim.backend import ti
from diffsim.errors import DiffsimError

W = np.array([1.0, 0.5, 2.0])          # per-member loss weights (constants)


class Decay:
    """B exponential decays over ``steps`` Euler steps of ``dt`` seconds on a
    :class:`diffsim.tape.Tape` with launch ``policy``. Inputs k [1/s] and x0, each (B,)."""

    def __init__(self, k, x0, *, steps, dt, policy):
        B = len(k)
        self.B, self.steps, self.dt = B, steps, dt
        fused = isinstance(policy, tape.Fused)
        # Fused: one slot per checkpoint (segment boundary); Stepped: one per step
        rows = policy.slots(steps) if fused else steps + 1
        f = lambda shape: ti.field(ti.f64, shape, needs_grad=True, needs_dual=True)
        self.k, self.x0, self.x, self.loss = f(B), f(B), f((rows, B)), f(())
        self.w = ti.field(ti.f64, B)
        self.w.from_numpy(W[:B])
        kf, x0f, x, loss, w = self.k, self.x0, self.x, self.loss, self.w
        last = rows - 1

        @ti.kernel
        def zero_loss():                 # prepare: the loss accumulates in finish
            loss[None] = 0.0

        @ti.kernel
        def start():
            for b in range(B):
                x[0, b] = x0f[b]

        @ti.kernel
        def segment(s: ti.i32, t0: ti.i32, n: ti.i32, h: ti.f64):
            # Fused: the batch is the parallel outer loop, time runs inside it
            # (taichi-notes 1-2), the state a scalar local; k is read inside the loop
            for b in range(B):
                y = x[s, b]
                for _ in range(n):
                    y = y - h * kf[b] * y
                x[s + 1, b] = y

        @ti.kernel
        def step(t0: ti.i32, n: ti.template()):
            # Stepped: n steps per launch, one top-level loop per step (reversed in order)
            for i in ti.static(range(n)):
                for b in range(B):
                    x[t0 + i + 1, b] = x[t0 + i, b] - dt * kf[b] * x[t0 + i, b]

        @ti.kernel
        def finish():
            for b in range(B):
                loss[None] += 0.5 * w[b] * x[last, b] ** 2

        @ti.kernel
        def clear_grads():
            loss.grad[None] = 1.0
            for b in range(B):
                kf.grad[b] = 0.0
                x0f.grad[b] = 0.0
                for r in range(rows):
                    x.grad[r, b] = 0.0

        @ti.kernel
        def clear_duals():
            loss.dual[None] = 0.0
            for b in range(B):
                for r in range(rows):
                    x.dual[r, b] = 0.0

        self.seen = []                   # (sweep mode, piece) of every segment launch
        self.interrupt = False           # tests: Ctrl-C at the first reverse segment

        def segment_args(p, s):
            self.seen.append((s.mode, p))
            if self.interrupt and s.mode == "reverse":
                raise KeyboardInterrupt
            if fused:
                return p.k, p.t0, p.n, dt / s.refine
            return p.t0, p.n

        self.tape = tape.Tape(tape.Kernels(
            start=start, segment=segment if fused else step, finish=finish,
            segment_args=segment_args, prepare=zero_loss, clear_grads=clear_grads,
            read_grads=lambda: (kf.grad.to_numpy(), x0f.grad.to_numpy()),
            dual_loss=loss, clear_duals=clear_duals), policy, steps)
        self.set_inputs(k, x0)

    def set_inputs(self, k, x0):
        self.k.from_numpy(np.asarray(k, dtype=np.float64))
        self.x0.from_numpy(np.asarray(x0, dtype=np.float64))
        self.tape.inputs_changed()

    def forward(self, refine=1):
        self.tape.forward(refine=refine)
        return float(self.loss[None])

    def backward(self):
        """(dL/dk, dL/dx0), each (B,)."""
        return self.tape.backward()

    def tangent(self, dk, dx0):
        """Directional derivative of L along (dk, dx0)."""
        self.k.dual.from_numpy(np.asarray(dk, dtype=np.float64))
        self.x0.dual.from_numpy(np.asarray(dx0, dtype=np.float64))
        try:
            return self.tape.tangent(read=lambda: float(self.loss.dual[None]))
        finally:
            self.k.dual.fill(0.0)
            self.x0.dual.fill(0.0)


K = np.array([0.7, 1.3, 2.1])
X0 = np.array([1.0, -0.4, 2.5])
STEPS, DT = 53, 0.01


def closed_form(k, x0, steps=STEPS, dt=DT):
    a = 1.0 - k * dt
    xn = x0 * a ** steps
    loss = float(np.sum(0.5 * W * xn ** 2))
    return loss, -W * xn * x0 * steps * dt * a ** (steps - 1), W * xn * a ** steps


POLICIES = {"fused": tape.Fused(max_fused=10), "stepped": tape.Stepped(steps_per_launch=4)}


@pytest.fixture(scope="module", params=sorted(POLICIES))
def decay(request):
    return Decay(K, X0, steps=STEPS, dt=DT, policy=POLICIES[request.param])


def central_fd(sim, which, b, eps=1e-6):
    out = []
    for sgn in (1, -1):
        k, x0 = K.copy(), X0.copy()
        (k if which == "k" else x0)[b] += sgn * eps
        sim.set_inputs(k, x0)
        out.append(sim.forward())
    sim.set_inputs(K, X0)
    return (out[0] - out[1]) / (2 * eps)


def test_gradient_matches_the_closed_form_and_central_differences(decay):
    loss, gk, gx0 = closed_form(K, X0)
    assert decay.forward() == pytest.approx(loss, rel=1e-13)
    dk, dx0 = decay.backward()
    np.testing.assert_allclose(dk, gk, rtol=1e-12)
    np.testing.assert_allclose(dx0, gx0, rtol=1e-12)
    fd = [central_fd(decay, "k", b) for b in range(3)] + [central_fd(decay, "x0", b) for b in range(3)]
    np.testing.assert_allclose(np.concatenate([dk, dx0]), fd, rtol=1e-7, atol=1e-10)
    # the tangent sweep gives the same derivatives, one direction per sweep
    decay.forward()
    d = np.array([0.3, -1.0, 2.0])
    assert decay.tangent(d, 0 * d) == pytest.approx(float(gk @ d), rel=1e-12)
    assert decay.tangent(0 * d, d) == pytest.approx(float(gx0 @ d), rel=1e-12)


def test_schedule_forward_in_order_reverse_backwards(decay):
    decay.forward()
    decay.seen.clear()
    decay.forward()
    fwd = [p for m, p in decay.seen]
    assert [m for m, _ in decay.seen] == ["forward"] * len(fwd)
    assert sum(p.n for p in fwd) == STEPS
    assert [p.t0 for p in fwd] == [sum(q.n for q in fwd[:i]) for i in range(len(fwd))]
    if isinstance(decay.tape.policy, tape.Fused):
        assert [p.n for p in fwd] == [9, 9, 9, 9, 9, 8]       # ≤ max_fused, as equal as can be
        assert [p.k for p in fwd] == list(range(6))
    else:
        assert [p.n for p in fwd] == [4] * 13 + [1]            # chunks, then one step each
    decay.seen.clear()
    decay.backward()
    assert decay.seen == [("reverse", p) for p in reversed(fwd)]


def test_guards(decay):
    decay.forward()
    g1 = decay.backward()[0].copy()
    np.testing.assert_array_equal(decay.backward()[0], g1)     # cleared, not accumulated
    decay.set_inputs(K, X0)
    with pytest.raises(DiffsimError, match="inputs changed since the last forward"):
        decay.backward()
    decay.forward()
    decay.tangent(K, X0)                                       # not a tape to reverse
    with pytest.raises(DiffsimError, match="needs a forward"):
        decay.backward()


def test_clearing_is_skipped_only_after_a_completed_reverse(decay):
    # a read that leaves the gradients cleared (read_resets_grads) saves the clearing
    # launch; a reverse sweep interrupted after finish.grad leaves partial sums, and
    # the next one must clear them
    k = decay.tape.k
    saved = (k.read_grads, k.read_resets_grads, k.clear_grads)
    clears = []

    def clear():
        clears.append(1)
        saved[2]()

    def take():
        out = tuple(a.copy() for a in saved[0]())
        saved[2]()
        return out
    k.read_grads, k.read_resets_grads, k.clear_grads = take, True, clear
    try:
        decay.forward()
        want = decay.backward()[0]
        n = len(clears)
        np.testing.assert_array_equal(decay.backward()[0], want)
        assert len(clears) == n                                # clean: no clearing launch
        decay.interrupt = True
        with pytest.raises(KeyboardInterrupt):
            decay.backward()
        decay.interrupt = False
        np.testing.assert_array_equal(decay.backward()[0], want)
        assert len(clears) == n + 1
    finally:
        decay.interrupt = False
        k.read_grads, k.read_resets_grads, k.clear_grads = saved


def test_refined_forward_sweep(decay):
    if isinstance(decay.tape.policy, tape.Stepped):
        with pytest.raises(DiffsimError, match="Fused"):
            decay.forward(refine=2)
        return
    # steps of dt/2 over the same horizon and launches; never a tape to reverse
    assert decay.forward(refine=2) == pytest.approx(closed_form(K, X0, 2 * STEPS, DT / 2)[0], rel=1e-13)
    with pytest.raises(DiffsimError, match="needs a forward"):
        decay.backward()


def test_segments_and_policies():
    assert tape.segments(1001, 500) == [(0, 334), (334, 334), (668, 333)]
    assert tape.Fused(max_fused=500).slots(1001) == 4
    assert tape.Fused(serial_max_batch=64).serial(64) and not tape.Fused().serial(65)
    assert [tuple(p) for p in tape.Stepped(4).pieces(10)] == [(0, 0, 4), (1, 4, 4), (2, 8, 1), (3, 9, 1)]
    with pytest.raises(DiffsimError, match="steps_per_launch"):
        tape.Stepped(0)
    with pytest.raises(DiffsimError, match="at least 1"):
        tape.segments(0)


def test_ode_integration_on_the_tape_guards_and_gradient():
    # the fused reverse directly, on both backends: right on Quadrants too for an rhs
    # indexed componentwise, as Lotka-Volterra's is (taichi-notes 33, 44)
    from diffsim.ode.solvers import quiet_trace
    with quiet_trace():          # the ODE kernels' trace-time helpers warn on purpose
        _ode_integration_on_the_tape()


def _ode_integration_on_the_tape():
    # the ODE driver through the tape: six segments (max_fused 7), the gradient against
    # central differences, a repeated backward() equal (it used to add into the last
    # one's gradients), and stale inputs refused
    from diffsim.ode import RK4
    from diffsim.ode.integration import Integration
    from diffsim.ode.steps import StepGrid
    from diffsim.ode.systems import SYSTEMS
    N, h = 40, 0.05
    obs = np.full(N, -1)
    obs[-1] = 0
    grid = StepGrid.arrays(np.full(N, h), h * np.arange(N), obs, -1, [N * h])
    it = Integration(SYSTEMS["oscillator"], RK4(), 2, N, 1, max_fused=7)
    it.set_grid(grid)
    assert len(it.segs) == 6 and sum(n for _, n in it.segs) == N
    it.set_data(np.zeros((2, 1, 2)), np.ones((2, 1, 2)))
    p, y0 = np.array([[2.0, 0.1], [1.5, 0.3]]), np.array([[1.0, 0.0], [0.5, -0.2]])
    with pytest.raises(DiffsimError, match="needs a forward"):
        it.backward()

    def loss(pp):
        it.set_inputs(pp, y0)
        return it.forward()
    loss(p)
    gp, gy = it.backward()
    np.testing.assert_array_equal(it.backward()[0], gp)
    eps = 1e-6
    for b, j in ((0, 0), (1, 1)):
        e = np.zeros_like(p)
        e[b, j] = eps
        fd = (loss(p + e) - loss(p - e)) / (2 * eps)
        assert gp[b, j] == pytest.approx(fd, rel=1e-7)
    it.set_inputs(p, y0)
    with pytest.raises(DiffsimError, match="inputs changed since the last forward"):
        it.backward()


def test_mass_spring_backward_refuses_changed_parameters():
    from diffsim.systems import bodies
    from diffsim.systems.mass_spring import MassSpring
    sim = MassSpring(bodies.triangle(), steps=5, dt=0.004)
    with pytest.raises(DiffsimError, match="needs a forward"):
        sim.backward()
    sim.forward("height")
    g = sim.backward()["stiffness"].copy()
    np.testing.assert_array_equal(sim.backward()["stiffness"], g)
    sim.set(stiffness=sim.get("stiffness") * 1.01)
    with pytest.raises(DiffsimError, match=r"after set\(\): the inputs changed"):
        sim.backward()


def test_reverse_refuses_fused_launches_longer_than_the_autodiff_stack_allows():
    # forward-only sweeps may fuse long segments; a reverse sweep through one would
    # overflow the autodiff stack (a bus error at 3,000 RK4 steps), so it is refused
    n = tape.reverse_limit() + 1
    sim = Decay(K, X0, steps=n, dt=1e-4, policy=tape.Fused(max_fused=n))
    assert sim.forward() == pytest.approx(closed_form(K, X0, n, 1e-4)[0], rel=1e-12)
    with pytest.raises(DiffsimError, match=r"at most 512 .*max_fused <= 512"):
        sim.backward()
