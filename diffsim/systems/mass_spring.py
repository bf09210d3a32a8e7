"""Batched 2D mass-spring systems with controllers, differentiated by Taichi reverse mode.

Physics (per body b, step t, semi-implicit Euler with step ``dt`` [s]):

    spring s = (i, j):  d = x_i - x_j, l = |d|, L = rest_s · (1 + act_s · u_s(t))
                        F = k_s (l - L) + c_s (v_i - v_j)·d/l   (tension > 0)
                        f_i -= F d/l,  f_j += F d/l
    mass i:             v' = exp(-damping·dt) v + dt (g ŷ + f_i / m_i),   x' = x + dt v'

Ground contact at height ``ground`` [m] is an event located inside the step: if the
mass would end the step below the ground while moving down, the time of impact
τ = (ground - y) / v'_y ∈ [0, dt) splits the step; the velocity is reflected with
``restitution`` e (vertical) and Coulomb ``friction`` μ reduces the tangential speed by
μ(1 + e)|v'_y| (``sticky=True``: tangential speed set to 0, DiffTaichi's ground), and
only the remaining dt - τ moves with the new velocity. The end-of-step position is
continuous in the impact phase, so d(height after an elastic bounce)/d(initial height)
= -1 exactly (naively flipping the velocity gives +1).

Controllers (u ∈ [-1, 1] per actuated spring, one set of weights per body):
  "neural": DiffTaichi's closed loop: inputs sin(ω t dt + 2πk/n_sin) for k < n_sin and
      0.05·(x_i - centre, v_i) for every mass; hidden = tanh(W1 in + b1); u = tanh(W2 h + b2).
  "sine": u = amp · sin(ω t dt + phase) per actuated spring.
  "sequence": u = seq[p] for t in the p-th of ``pieces`` equal time intervals.
  "none": u = 0.

Layout (DiffTaichi's): every per-step quantity lives in a field indexed (body, step,
element), so each step writes a new time index (Taichi's global data access rules hold)
and nothing is carried in locals (no autodiff stack). One kernel launch advances every
body ``steps_per_launch`` steps (1 for short horizons, STEPS_PER_LAUNCH for long ones:
launches cost more than a small body's step); it holds one top-level loop per stage
(controller layers, springs, masses) and step, which Taichi's reverse kernel runs
backwards. Each stage loops over the batch
only (serialized when B = 1, which skips the parallel dispatch); a body's springs, neurons
and objective terms run serially inside it, so every sum (spring forces into masses,
layer sums, the objective, and every gradient accumulation of the reverse kernels) is
done in one fixed order: identical inputs give bitwise identical objectives and
gradients. (Flat parallel loops over (body, spring) summed with atomics in thread
order, which changed the last bits between runs; robot optimisations amplify such bits
through grazing contacts, see docs/mass_spring.md.) The reverse sweep (diffsim.tape,
Stepped launch policy) calls the step kernel's ``.grad`` for t = steps-1 … 0 without
ti.ad.Tape (no per-call clearing of every gradient). A time loop fused inside one
kernel over per-step fields gave wrong gradients (zeros) or segfaulted in Taichi 1.7.4 (taichi-notes 15), and so did all stages as inner
loops of one top-level batch loop (zero stiffness gradients), so neither is used.
"""

import math

import numpy as np
from ..backend import ti

from .. import runtime, tape
from ..errors import DiffsimError, SimulationError
from ..ode.solvers import make_solver
from .bodies import Body, check_body, zero_length_springs

CONTROLLERS = ("none", "neural", "sine", "sequence")
OBJECTIVES = ("distance", "target", "shape", "area", "identify", "height")
#: learnable per-body arrays: name -> (shape after the batch axis as a function of sizes)
BODY_PARAMS = ("stiffness", "damping", "rest", "actuation", "mass", "x0", "y0", "vx0", "vy0")


#: Time steps advanced per launch of the step kernel for horizons of at least
#: LONG_HORIZON steps (taichi-notes 34): a launch costs ~20-40 µs of Python and dispatch
#: here, more than a small body's step; the price is compile time, about linear in it
#: (robot A's neural step: ~2 s per step in the kernel, forward + reverse).
STEPS_PER_LAUNCH = 4
LONG_HORIZON = 256
#: Taichi indexes a field with 32-bit integers
MAX_FIELD_ELEMENTS = 2**31 - 1
#: parameter groups with one entry per spring (padded to one entry when a body has none)
SPRING_PARAMS = ("stiffness", "damping", "rest", "actuation")


def field_bytes(n_masses, n_springs, n_actuated, *, batch, steps, controller="none", hidden=32,
                sines=10, pieces=8, real_bytes=8):
    """Bytes of the Taichi fields a :class:`MassSpring` with these sizes allocates (values and
    gradients), and the entry count of its largest field; computed without allocating, so
    a caller can refuse enormous sizes first (runtime.check_memory). Plain Python integers:
    no overflow for any input."""
    B, T, N = int(batch), int(steps), int(n_masses)
    S1, A = max(int(n_springs), 1), max(int(n_actuated), 1)
    ctrl = controller if n_actuated > 0 else "none"
    H, NS, P = int(hidden), int(sines), int(pieces)
    I = NS + 4 * N
    grad = 4 * B * (T + 1) * N + 2 * B * T * N + 2 * B * T + B * T * A + 3 * B + 1
    grad += 4 * B * S1 + 5 * B * N
    largest = B * (T + 1) * N
    if ctrl == "neural":
        grad += B * T * (2 * H + A + I) + B * (H * I + H + A * H + A)
        largest = max(largest, B * T * I, B * T * H, B * H * I)
    elif ctrl == "sine":
        grad += 2 * B * A
    elif ctrl == "sequence":
        grad += B * P * A
        largest = max(largest, B * P * A)
    plain = 2 + 2 * N + 2 * (T + 1) * N + 2
    ints = 3 * S1 + N
    # every differentiable field holds a value, a gradient (reverse mode) and a dual
    # (forward mode, MassSpring.forward_tangent)
    return real_bytes * (3 * grad + plain) + 4 * ints, largest


class MassSpring(runtime.RuntimeBound):
    """B copies of one body topology (each with its own parameters and controller
    weights) simulated for ``steps`` steps of ``dt`` seconds.

    controller: "none", "neural" (``hidden``, ``sines``), "sine" or "sequence"
    (``pieces``); ``omega`` [rad/s] is the clock frequency of "neural" and "sine".
    gravity [m/s², signed, y up], ground [m] (None: no ground), friction (Coulomb μ),
    restitution e ∈ [0, 1], sticky (DiffTaichi's ground: tangential velocity stops on
    impact), damping [1/s] (global velocity damping exp(-damping·dt)).
    steps_per_launch: time steps per launch of the step kernel (None: STEPS_PER_LAUNCH
    when steps >= LONG_HORIZON, else 1); same numbers bit for bit, fewer launches, a
    longer compile.
    """

    def __init__(self, body: Body, *, batch=1, steps=100, dt=0.004, gravity=-4.8, ground=0.1,
                 friction=0.0, restitution=0.0, sticky=False, damping=0.0,
                 controller="none", hidden=32, sines=10, omega=10.0, pieces=8,
                 steps_per_launch=None):
        info = self._bind_runtime()
        if controller not in CONTROLLERS:
            raise DiffsimError(f"controller={controller!r} is not known; use one of {', '.join(CONTROLLERS)}")
        if not (isinstance(steps, (int, np.integer)) and steps >= 1):
            raise DiffsimError(f"steps must be a positive integer, got {steps!r}")
        if not (math.isfinite(dt) and dt > 0):
            raise DiffsimError(f"dt must be a positive number of seconds, got {dt!r}")
        if not (isinstance(batch, (int, np.integer)) and batch >= 1):
            raise DiffsimError(f"batch must be a positive integer, got {batch!r}")
        for name, v in (("hidden", hidden), ("sines", sines), ("pieces", pieces)):
            if not (isinstance(v, (int, np.integer)) and v >= (0 if name == "sines" else 1)):
                raise DiffsimError(f"{name} must be a {'non-negative' if name == 'sines' else 'positive'} "
                                   f"integer, got {v!r}")
        check_body(body)
        nbytes, elems = field_bytes(body.n_masses, body.n_springs, len(body.actuated), batch=batch,
                                    steps=steps, controller=controller, hidden=hidden, sines=sines,
                                    pieces=pieces, real_bytes=8 if info.precision == "f64" else 4)
        what = (f"mass-spring fields ({batch} bodies × {steps} steps × {body.n_masses} masses, "
                f"{body.n_springs} springs)")
        if elems > MAX_FIELD_ELEMENTS:
            raise DiffsimError(f"{what} need a field of {elems:,} entries; Taichi indexes fields with "
                               f"32-bit integers (at most {MAX_FIELD_ELEMENTS:,}); use fewer steps, bodies or masses")
        runtime.check_memory(nbytes, what=what)
        self.body = body
        self.B, self.T, self.dt = int(batch), int(steps), float(dt)
        self.N, self.S = body.n_masses, body.n_springs
        self.act_idx = np.full(self.S, -1, dtype=np.int32)
        self.act_idx[body.actuated] = np.arange(len(body.actuated))
        self.A = len(body.actuated)
        self.controller = controller if self.A > 0 else "none"
        self.H, self.NS, self.omega, self.P = int(hidden), int(sines), float(omega), int(pieces)
        self.I = self.NS + 4 * self.N
        self.gravity, self.ground = float(gravity), ground
        self.friction, self.restitution = float(friction), float(restitution)
        self.sticky, self.damping = bool(sticky), float(damping)
        self.real, self.np_real = info.real, info.numpy_dtype
        self._alloc()
        if steps_per_launch is None:
            K = STEPS_PER_LAUNCH if self.T >= LONG_HORIZON else 1
        elif isinstance(steps_per_launch, (int, np.integer)) and steps_per_launch >= 1:
            K = int(steps_per_launch)
        else:
            raise DiffsimError(f"steps_per_launch must be a positive integer or None, got {steps_per_launch!r}")
        self.steps_per_launch = K
        # one launch of the step kernel per K steps, then the remainder one step per
        # launch (the variants compiled are K and 1 steps); batch loops serial for B = 1
        self._policy = tape.Stepped(K, serial_max_batch=1)
        self._compile()
        self._tape = self._make_tape()
        self.reset_body(body)

    def _make_tape(self):
        """The driver of the time loop (diffsim.tape): these kernels in its contract."""
        k, loss, p, S = self._k, self.loss, self.p, self.S

        def clear_grads():
            k["clear_grads"]()
            loss.grad[None] = 1.0

        def read_grads():
            out = {n: f.grad.to_numpy().astype(np.float64) for n, f in p.items()}
            for n in SPRING_PARAMS:
                out[n] = out[n][:, :S]
            return out
        # step(t0, n) advances n steps, each state in fields indexed by step: the reverse
        # calls step.grad backwards; clear_values zeroes the per-step accumulators (forces,
        # layer sums, the loss) before each forward and tangent sweep
        return tape.Tape(tape.Kernels(
            start=k["start"], segment=k["step"], finish=k["objective"],
            prepare=k["clear_values"], clear_grads=clear_grads, read_grads=read_grads,
            dual_loss=loss, clear_duals=k["clear_duals"]),
            self._policy, self.T, inputs="set()")

    # -- fields ----------------------------------------------------------------------
    def _alloc(self):
        r, B, T, N, S = self.real, self.B, self.T, self.N, self.S
        A = max(self.A, 1)
        # needs_dual: forward-mode (tangent) sweeps, see forward_tangent()
        f = lambda shape, grad=True: ti.field(r, shape, needs_grad=grad, needs_dual=grad)
        self.xs, self.ys, self.vxs, self.vys = (f((B, T + 1, N)) for _ in range(4))
        self.fx, self.fy = f((B, T, N)), f((B, T, N))
        self.cx, self.cy = f((B, T)), f((B, T))
        self.u = f((B, T, A))
        S1 = max(S, 1)   # Taichi fields need positive sizes; loops run over S
        self.sa, self.sb = ti.field(ti.i32, S1), ti.field(ti.i32, S1)
        self.aidx, self.pin = ti.field(ti.i32, S1), ti.field(ti.i32, N)
        self.p = {n: f((B, S1)) for n in ("stiffness", "damping", "rest", "actuation")}
        self.p.update({n: f((B, N)) for n in ("mass", "x0", "y0", "vx0", "vy0")})
        c = self.controller
        if c == "neural":
            H, I = self.H, self.I
            self.p.update(w1=f((B, H, I)), b1=f((B, H)), w2=f((B, A, H)), b2=f((B, A)))
            self.hpre, self.hid, self.upre = f((B, T, H)), f((B, T, H)), f((B, T, A))
            self.inp = f((B, T, I))
        elif c == "sine":
            self.p.update(amp=f((B, A)), phase=f((B, A)))
        elif c == "sequence":
            self.p.update(seq=f((B, self.P, A)))
        self.aux = [f(B) for _ in range(3)]
        self.loss = f(())
        # objective data (no gradients)
        self.target = ti.field(r, 2)
        self.shape_t = ti.field(r, (N, 2))
        self.obs_x, self.obs_y = ti.field(r, (T + 1, N)), ti.field(r, (T + 1, N))
        self.scalar = ti.field(r, 2)   # [target area, unused]
        self.reach = ti.field(r, ())   # largest |coordinate| at the last step (blow-up check)

    def reset_body(self, body: Body):
        """Load a body's parameters into every batch entry (topology must match)."""
        self._check_runtime()
        if body.n_masses != self.N or body.n_springs != self.S:
            raise DiffsimError("reset_body needs a body with the same masses and springs")
        check_body(body)
        pad = lambda a, v=0: np.concatenate([a, np.full(max(1 - len(a), 0), v, dtype=a.dtype)])
        self.sa.from_numpy(pad(body.springs[:, 0].astype(np.int32)))
        self.sb.from_numpy(pad(body.springs[:, 1].astype(np.int32)))
        self.aidx.from_numpy(pad(np.maximum(self.act_idx, 0).astype(np.int32)))
        self.pin.from_numpy(body.pinned.astype(np.int32))
        self.set(stiffness=body.stiffness, damping=body.damping, rest=body.rest,
                 actuation=np.where(self.act_idx >= 0, body.actuation, 0.0), mass=body.mass,
                 x0=body.x[:, 0], y0=body.x[:, 1], vx0=body.v[:, 0], vy0=body.v[:, 1])

    # -- parameters --------------------------------------------------------------------
    @property
    def param_names(self):
        return list(self.p)

    def shape_of(self, name):
        """Shape of parameter ``name`` including the batch axis ((B, 0) for a spring
        group of a body without springs)."""
        if name in SPRING_PARAMS:
            return (self.B, self.S)
        return self.p[name].shape

    def set(self, **values):
        """Set parameters by name: arrays broadcast to the field's shape (batch axis first)."""
        self._check_runtime()
        for name, v in values.items():
            if name not in self.p:
                raise DiffsimError(f"unknown mass-spring parameter {name!r}; known: {', '.join(self.p)}")
            fld = self.p[name]
            if name in SPRING_PARAMS and self.S == 0:
                continue        # no springs: the padding entry stays as it is
            a = np.broadcast_to(np.asarray(v, dtype=self.np_real), self.shape_of(name))
            fld.from_numpy(np.ascontiguousarray(a))
        self._tape.inputs_changed()

    def get(self, name) -> np.ndarray:
        """Parameter ``name`` as float64, shaped :meth:`shape_of`."""
        self._check_runtime()
        if name not in self.p:
            raise DiffsimError(f"unknown mass-spring parameter {name!r}; known: {', '.join(self.p)}")
        a = self.p[name].to_numpy().astype(np.float64)
        return a[:, :self.S] if name in SPRING_PARAMS else a

    def init_controller(self, seed=0, scale=1.0):
        """Seeded random weights: DiffTaichi's scaled normal init for "neural"
        (W1 ~ N(0, 2/(H+I))·2, W2 ~ N(0, 2/(H+A))·3, zero biases); amp = 0.5·scale and
        uniform phases for "sine"; N(0, 0.3²) for "sequence"."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DiffsimError(f"the controller seed must be an integer >= 0, got {seed!r}")
        if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
            raise DiffsimError(f"the controller weight scale must be a finite number, got {scale!r}")
        rng = np.random.default_rng(seed)
        B, A, H, I = self.B, max(self.A, 1), self.H, self.I
        c = self.controller
        if c == "neural":
            self.set(w1=rng.normal(size=(B, H, I)) * math.sqrt(2 / (H + I)) * 2 * scale,
                     w2=rng.normal(size=(B, A, H)) * math.sqrt(2 / (H + A)) * 3 * scale,
                     b1=0.0, b2=0.0)
        elif c == "sine":
            self.set(amp=0.5 * scale, phase=rng.uniform(0, 2 * math.pi, size=(B, A)))
        elif c == "sequence":
            self.set(seq=rng.normal(size=(B, self.P, A)) * 0.3 * scale)

    def set_observation(self, traj):
        """Observed positions for objective "identify": shape (steps + 1, N, 2) [m]."""
        traj = np.asarray(traj, dtype=self.np_real)
        if traj.shape != (self.T + 1, self.N, 2):
            raise DiffsimError(f"an observed trajectory must have shape {(self.T + 1, self.N, 2)}, got {traj.shape}")
        self.obs_x.from_numpy(np.ascontiguousarray(traj[..., 0]))
        self.obs_y.from_numpy(np.ascontiguousarray(traj[..., 1]))

    def set_target(self, point=None, shape=None, area=None):
        """Objective data: target point (2,) [m], target shape (N, 2) [m], area [m²]."""
        if point is not None:
            self.target.from_numpy(np.asarray(point, dtype=self.np_real).reshape(2))
        if shape is not None:
            self.shape_t.from_numpy(np.asarray(shape, dtype=self.np_real).reshape(self.N, 2))
        if area is not None:
            self.scalar.from_numpy(np.array([area, 0.0], dtype=self.np_real))

    # -- kernels -----------------------------------------------------------------------
    def _compile(self):
        B, T, N, S, A = self.B, self.T, self.N, self.S, max(self.A, 1)
        H, NS, I, P = self.H, self.NS, self.I, self.P
        ctrl = self.controller
        xs, ys, vxs, vys, fx, fy = self.xs, self.ys, self.vxs, self.vys, self.fx, self.fy
        cx, cy, u, p = self.cx, self.cy, self.u, self.p
        sa, sb, aidx, pin = self.sa, self.sb, self.aidx, self.pin
        k_, c_, L_, a_, m_ = p["stiffness"], p["damping"], p["rest"], p["actuation"], p["mass"]
        dt, omega = self.dt, self.omega
        g = self.gravity
        has_ground = self.ground is not None
        ground = float(self.ground) if has_ground else 0.0
        mu, e, sticky = self.friction, self.restitution, self.sticky
        sdamp = math.exp(-self.damping * self.dt)
        inv_n = 1.0 / N
        two_pi_ns = 2 * math.pi / max(NS, 1)
        w1 = b1 = w2 = b2 = hpre = hid = upre = inp = amp = phase = seq = None
        if ctrl == "neural":
            w1, b1, w2, b2 = p["w1"], p["b1"], p["w2"], p["b2"]
            hpre, hid, upre, inp = self.hpre, self.hid, self.upre, self.inp
        if ctrl == "sine":
            amp, phase = p["amp"], p["phase"]
        if ctrl == "sequence":
            seq = p["seq"]
        loss, aux = self.loss, self.aux
        target, shape_t, obs_x, obs_y, scalar = self.target, self.shape_t, self.obs_x, self.obs_y, self.scalar

        # Every kernel below is one loop over the batch with serial inner loops per stage.
        # Within a body nothing runs concurrently, so every += (spring forces into masses,
        # layer sums, the objective) and every gradient accumulation of the reverse kernel
        # happens in one fixed order: a run is bitwise reproducible. Atomic adds from a
        # flat parallel loop (the former layout) summed in thread order, which changed the
        # last bits of forces and gradients between identical runs. Locals are assigned once
        # (no autodiff stack; inner loops may be longer than runtime.AD_STACK_SIZE).
        serial_batch = self._policy.serial(B)   # one iteration: skip the parallel dispatch (taichi-notes 24)
        keep_tangent = 0.0 if sticky else 1.0

        @ti.kernel
        def start():
            ti.loop_config(serialize=serial_batch)
            for b, i in ti.ndrange(B, N):
                xs[b, 0, i] = p["x0"][b, i]
                ys[b, 0, i] = p["y0"][b, i]
                vxs[b, 0, i] = p["vx0"][b, i]
                vys[b, 0, i] = p["vy0"][b, i]

        # The mass update is the solver registry's semi-implicit Euler (one implementation
        # shared by every system) from the damped velocity exp(-damping·dt)·v, with the
        # acceleration g ŷ + f/m computed by the spring stage: (Δx, Δy, vx', vy').
        sie = make_solver("semi_implicit_euler").partitioned

        def given(t, q, v, ax, ay):    # trace time: the acceleration, already computed
            return [ax, ay]

        def kick_drift(vx, vy, ax, ay):
            # trace time, called in ti.static: scalars, not a vector from a ti.func (whose
            # subscripts Quadrants' forward mode fails to compile: UnaryOpStmt assertion)
            dq, v1 = sie.step(given, None, None, [vx, vy], dt, (ax, ay))
            return tuple(dq + v1)

        @ti.func
        def advance(t: ti.template()):
            # t: the step index as an expression (template: substituted into every
            # index, so no statement runs outside the stage loops)
            # One top-level loop per stage (Taichi reverses top-level loops in order; several
            # inner loops in one body were not: the spring stage's adjoint ran before the
            # mass stage's and gave zero stiffness gradients). Each stage loops over the
            # batch only; the elements of a body run serially inside it.
            if ti.static(ctrl == "neural"):
                ti.loop_config(serialize=serial_batch)
                for b in range(B):
                    for i in range(N):
                        cx[b, t] += xs[b, t, i] * inv_n
                        cy[b, t] += ys[b, t, i] * inv_n
                ti.loop_config(serialize=serial_batch)
                for b in range(B):
                    for k in range(NS):
                        inp[b, t, k] = ti.sin(omega * t * dt + two_pi_ns * k)
                    for i in range(N):
                        inp[b, t, NS + 4 * i] = 0.05 * (xs[b, t, i] - cx[b, t])
                        inp[b, t, NS + 4 * i + 1] = 0.05 * (ys[b, t, i] - cy[b, t])
                        inp[b, t, NS + 4 * i + 2] = 0.05 * vxs[b, t, i]
                        inp[b, t, NS + 4 * i + 3] = 0.05 * vys[b, t, i]
                ti.loop_config(serialize=serial_batch)
                for b in range(B):
                    for h in range(H):
                        for k in range(I):
                            hpre[b, t, h] += w1[b, h, k] * inp[b, t, k]
                ti.loop_config(serialize=serial_batch)
                for b in range(B):
                    for h in range(H):
                        hid[b, t, h] = ti.tanh(hpre[b, t, h] + b1[b, h])
                ti.loop_config(serialize=serial_batch)
                for b in range(B):
                    for j in range(A):
                        for h in range(H):
                            upre[b, t, j] += w2[b, j, h] * hid[b, t, h]
                ti.loop_config(serialize=serial_batch)
                for b in range(B):
                    for j in range(A):
                        u[b, t, j] = ti.tanh(upre[b, t, j] + b2[b, j])
            elif ti.static(ctrl == "sine"):
                ti.loop_config(serialize=serial_batch)
                for b, j in ti.ndrange(B, A):
                    u[b, t, j] = amp[b, j] * ti.sin(omega * t * dt + phase[b, j])
            elif ti.static(ctrl == "sequence"):
                # the piece index is computed inside the loop: a differentiable kernel may
                # not mix loops with statements outside them
                ti.loop_config(serialize=serial_batch)
                for b, j in ti.ndrange(B, A):
                    u[b, t, j] = seq[b, ti.min(t * P // T, P - 1), j]
            # -- springs: each body's forces summed in spring order ------------------
            ti.loop_config(serialize=serial_batch)
            for b in range(B):
                for s in range(S):
                    i, j = sa[s], sb[s]
                    dx = xs[b, t, i] - xs[b, t, j]
                    dy = ys[b, t, i] - ys[b, t, j]
                    l = ti.sqrt(dx * dx + dy * dy)
                    nx, ny = dx / l, dy / l
                    rest = L_[b, s] * (1.0 + a_[b, s] * u[b, t, aidx[s]])
                    vrel = (vxs[b, t, i] - vxs[b, t, j]) * nx + (vys[b, t, i] - vys[b, t, j]) * ny
                    F = k_[b, s] * (l - rest) + c_[b, s] * vrel
                    fx[b, t, i] -= F * nx
                    fy[b, t, i] -= F * ny
                    fx[b, t, j] += F * nx
                    fy[b, t, j] += F * ny
            # -- masses: semi-implicit Euler with in-step ground impact --------------
            # (each element written once: order-free, so parallel over masses when B > 1;
            # for one body serial: its reverse then adds into the gradients without
            # atomics, which halved the 64×64 cloth's reverse time, taichi-notes 35)
            ti.loop_config(serialize=serial_batch)
            for b, i in ti.ndrange(B, N):
                px, py = xs[b, t, i], ys[b, t, i]
                inv_m = 1.0 / m_[b, i]
                dx, dy, nvx, nvy = ti.static(kick_drift(sdamp * vxs[b, t, i], sdamp * vys[b, t, i],
                                                        fx[b, t, i] * inv_m, g + fy[b, t, i] * inv_m))
                fixed = pin[i] != 0
                if ti.static(has_ground):
                    hit = (py + dy < ground) & (nvy < 0.0)
                    den = ti.select(hit, nvy, -1.0)
                    toi = ti.select(hit, ti.min(ti.max((ground - py) / den, 0.0), dt), 0.0)
                    rvy = -e * nvy
                    slide = ti.max(ti.abs(nvx) + mu * (1.0 + e) * nvy, 0.0)
                    rvx = ti.select(nvx > 0.0, slide, -slide) * keep_tangent
                    ex = ti.select(hit, px + toi * nvx + (dt - toi) * rvx, px + dx)
                    ey = ti.select(hit, py + toi * nvy + (dt - toi) * rvy, py + dy)
                    xs[b, t + 1, i] = ti.select(fixed, px, ex)
                    ys[b, t + 1, i] = ti.select(fixed, py, ey)
                    vxs[b, t + 1, i] = ti.select(fixed, 0.0, ti.select(hit, rvx, nvx))
                    vys[b, t + 1, i] = ti.select(fixed, 0.0, ti.select(hit, rvy, nvy))
                else:
                    xs[b, t + 1, i] = ti.select(fixed, px, px + dx)
                    ys[b, t + 1, i] = ti.select(fixed, py, py + dy)
                    vxs[b, t + 1, i] = ti.select(fixed, 0.0, nvx)
                    vys[b, t + 1, i] = ti.select(fixed, 0.0, nvy)

        @ti.kernel
        def step(t0: ti.i32, K: ti.template()):
            # K steps per launch (taichi-notes 34): still one top-level loop per stage
            # and step, reversed in order by autodiff; only the launches are fewer.
            for tt in ti.static(range(K)):
                advance(t0 + tt)


        @ti.kernel
        def objective(kind: ti.template()):
            # serial over the batch too: the batch sum into loss is then in a fixed order
            ti.loop_config(serialize=True)
            for b in range(B):
                if ti.static(kind == "distance"):         # -(centre_x(T) - centre_x(0))
                    for i in range(N):
                        loss[None] += -(xs[b, T, i] - xs[b, 0, i]) * inv_n
                elif ti.static(kind == "target"):         # ½ |centre(T) - target|²
                    for i in range(N):
                        aux[0][b] += xs[b, T, i] * inv_n
                        aux[1][b] += ys[b, T, i] * inv_n
                    loss[None] += 0.5 * ((aux[0][b] - target[0]) ** 2 + (aux[1][b] - target[1]) ** 2)
                elif ti.static(kind == "shape"):          # ½ mean_i |x_i(T) - s_i|²
                    for i in range(N):
                        loss[None] += 0.5 * inv_n * ((xs[b, T, i] - shape_t[i, 0]) ** 2
                                                     + (ys[b, T, i] - shape_t[i, 1]) ** 2)
                elif ti.static(kind == "area"):           # (area(T) - A*)², masses in polygon order
                    for i in range(N):
                        j = (i + 1) % N
                        aux[0][b] += 0.5 * (xs[b, T, i] * ys[b, T, j] - xs[b, T, j] * ys[b, T, i])
                    loss[None] += (aux[0][b] - scalar[0]) ** 2
                elif ti.static(kind == "identify"):       # mean_{t,i} |x_i(t) - observed|²
                    for t in range(T + 1):
                        for i in range(N):
                            loss[None] += ((xs[b, t, i] - obs_x[t, i]) ** 2
                                           + (ys[b, t, i] - obs_y[t, i]) ** 2) * (inv_n / (T + 1))
                else:                                     # "height": mean_i y_i(T)
                    for i in range(N):
                        loss[None] += ys[b, T, i] * inv_n

        zero = [xs, ys, vxs, vys, fx, fy, cx, cy, u, *aux, loss]
        if ctrl == "neural":
            zero += [hpre, hid, upre, inp]
        params = list(p.values())

        @ti.kernel
        def clear_values():
            for I_ in ti.grouped(fx):
                fx[I_] = 0.0
                fy[I_] = 0.0
            for I_ in ti.grouped(cx):
                cx[I_] = 0.0
                cy[I_] = 0.0
            for b in range(B):
                for k in ti.static(range(3)):
                    aux[k][b] = 0.0
            loss[None] = 0.0
            if ti.static(ctrl == "neural"):
                for I_ in ti.grouped(hpre):
                    hpre[I_] = 0.0
                for I_ in ti.grouped(upre):
                    upre[I_] = 0.0

        @ti.kernel
        def clear_duals():
            # Taichi's forward mode turns every store into a field into an *addition* to its
            # dual (ti.ad.FwdMode clears all duals on entry for that reason; measured: without
            # this, each sweep's tangent added to the last's), so a tangent sweep starts
            # with every dual it writes at zero.
            for f in ti.static(zero):
                for I_ in ti.grouped(f):
                    f.dual[I_] = 0.0

        @ti.kernel
        def clear_grads():
            for f in ti.static(zero):
                for I_ in ti.grouped(f):
                    f.grad[I_] = 0.0
            for f in ti.static(params):
                for I_ in ti.grouped(f):
                    f.grad[I_] = 0.0

        reach = self.reach

        @ti.kernel
        def final_reach():
            # never differentiated: a running max is fine here
            ti.loop_config(serialize=True)
            for _ in range(1):
                m = 0.0
                for b in range(B):
                    for i in range(N):
                        m = ti.max(m, ti.max(ti.abs(xs[b, T, i]), ti.abs(ys[b, T, i])))
                reach[None] = m

        self._k = dict(start=start, step=step, objective=objective, final_reach=final_reach,
                       clear_values=clear_values, clear_grads=clear_grads, clear_duals=clear_duals)

    # -- running -------------------------------------------------------------------------
    def forward(self, objective="distance") -> float:
        """Simulate every body from its initial state; returns the objective summed over
        the batch (see :data:`OBJECTIVES` and the module docstring for definitions)."""
        self._check_runtime()
        if objective not in OBJECTIVES:
            raise DiffsimError(f"objective={objective!r} is not known; use one of {', '.join(OBJECTIVES)}")
        self._tape.forward((objective,))
        self._objective = objective
        val = float(self.loss[None])
        self._check_blow_up(val)
        return val

    def _check_blow_up(self, val):
        """SimulationError when the objective ``val`` of the last pass is not finite or a
        mass ended absurdly far away."""
        if not math.isfinite(val):
            raise SimulationError(self._blow_up_message(val))
        # An explicit step that is unstable can grow without overflowing (1e119 m seen for a
        # 20×20 cloth at dt = 2 ms): refuse positions a million times beyond the start.
        k = self._k
        k["final_reach"]()
        reach = float(self.reach[None])
        limit = 1e6 * (1.0 + float(np.abs(self.body.x).max()))
        if not reach <= limit:
            raise SimulationError(
                f"the mass-spring simulation blew up: a mass ended {reach:.3g} m from the origin "
                f"(started within {limit / 1e6 - 1:.3g} m); dt={self.dt} s is probably too large for "
                "the stiffness, damping and masses; lower sim.dt (and raise sim.steps) or the stiffness")

    def _blow_up_message(self, val):
        """Why the objective is not finite: a spring that reached zero length (its
        direction d/|d| is 0/0), else a step too large for the stiffness and mass."""
        tr = self.trajectory()
        for b in range(self.B):
            ok = np.isfinite(tr[b]).all(axis=(1, 2))
            t_bad = int(np.argmin(ok)) if not ok.all() else None
            if t_bad is None:
                continue
            for t in range(max(t_bad - 1, 0), -1, -1):
                if np.isfinite(tr[b, t]).all():
                    z = zero_length_springs(tr[b, t], self.body.springs, tol=1e-12)
                    if len(z):
                        j = int(z[0])
                        i0, i1 = self.body.springs[j]
                        return (f"the mass-spring simulation produced {val}: spring {j} (masses {i0} and "
                                f"{i1}) of body {b} has zero length at step {t}, so its direction is "
                                "undefined; keep the masses apart (stiffer springs, smaller dt)")
                    break
            return (f"the mass-spring simulation produced {val} (body {b} blew up at step {t_bad}): "
                    f"dt={self.dt} s is probably too large for the stiffness/mass; lower sim.dt or the stiffness")
        return (f"the mass-spring objective is {val} although the trajectory is finite; "
                "check the objective's data (target, observed trajectory)")

    def backward(self) -> dict:
        """Reverse sweep after :meth:`forward`: d objective / d parameter, each shaped like
        the parameter (batch axis first)."""
        self._check_runtime()
        self._tape.check_reverse()       # before reading the objective a forward() sets
        return self._tape.backward((self._objective,))

    def forward_tangent(self, objective, entries):
        """Forward-mode derivatives (the ``Forward`` gradient method): for each
        ``(name, index)`` in ``entries`` (index into the parameter's array, batch axis
        first), d objective / d p[name][index] by one tangent sweep through the same
        kernels as :meth:`forward`, compiled by Taichi's forward-mode AD (dual fields):
        ground contacts are differentiated exactly as :meth:`backward` does, and the
        results equal backward()'s to round-off. Returns (objective, array (len(entries),)).
        Cost: one sweep (≈ 1-2 forward passes) per entry, so reverse mode is the method
        for many parameters. Leaves the forward pass's values as forward() does."""
        self._check_runtime()
        if objective not in OBJECTIVES:
            raise DiffsimError(f"objective={objective!r} is not known; use one of {', '.join(OBJECTIVES)}")
        out = np.zeros(len(entries))
        val = None
        # read inside the sweep: leaving FwdMode zeroes the dual of the field it was given
        read = lambda: float(self.loss.dual[None])
        try:
            for e, (name, index) in enumerate(entries):
                fld = self.p[name]
                seed = np.zeros(fld.shape, dtype=self.np_real)
                seed[index] = 1.0
                fld.dual.from_numpy(seed)    # outside FwdMode: a plain copy
                out[e] = self._tape.tangent((objective,), read=read)
                fld.dual.fill(0.0)
                val = float(self.loss[None])
        finally:
            self._tape.invalidate()
        if val is None:
            val = self.forward(objective)
        else:
            self._check_blow_up(val)
        self._objective = objective
        # every per-step value is in the fields, as after forward(): backward() may follow
        self._tape.accept()
        return val, out

    def trajectory(self) -> np.ndarray:
        """Positions after :meth:`forward`: shape (B, steps + 1, N, 2) [m]."""
        self._check_runtime()
        return np.stack([self.xs.to_numpy(), self.ys.to_numpy()], axis=-1).astype(np.float64)

    def velocities(self) -> np.ndarray:
        """Velocities after :meth:`forward`: shape (B, steps + 1, N, 2) [m/s]."""
        return np.stack([self.vxs.to_numpy(), self.vys.to_numpy()], axis=-1).astype(np.float64)

    def actuations(self) -> np.ndarray:
        """Controller outputs after :meth:`forward`: shape (B, steps, A) in [-1, 1]."""
        return self.u.to_numpy().astype(np.float64)[:, :, :self.A]
