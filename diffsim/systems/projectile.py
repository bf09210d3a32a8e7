"""Batched point-mass projectile: gravity, quadratic drag, wind, ground impact, bounces.

Equations (per cannon b, y up, ground at y = 0):
    dv/dt = -g·ŷ - k·|v - w|·(v - w),   dp/dt = v
k = drag [1/m] (quadratic drag per unit mass), w = wind [m/s] (horizontal: x and z).
Launch from (x0, h, z0) with speed [m/s], elevation ``angle`` [rad] above the
horizontal and ``azimuth`` [rad] from +x towards +z (3D only).

Ground impact is an event located *inside* the step where y changes sign: the impact
fraction s ∈ [0, 1] is the root of the cubic Hermite interpolant of y through the step's
end points and velocities (exact when acceleration is constant, e.g. RK4 without drag),
found by Newton iterations from the linear guess. A step that starts on the ground going
up (a launch from height 0) takes off at s = 0; its impact is the root of the deflated
cubic y(s)/s, so even a step longer than the whole flight lands in the right place.
Impact point, time and velocity are smooth functions of the state, so landing distance
and flight time are differentiable in every parameter. A bounce reflects the vertical
impact velocity with restitution e > 0 and spends the rest of the step moving away from
the ground (with RK4 the impact velocity is the Hermite cubic's derivative, third order).
An impact with e = 0, or after ``bounces`` bounces, is the *landing*: the cannon stops
and its landing point and time are the outputs. Reverse-mode derivatives come from a
hand-written adjoint of these kernels (:mod:`.projectile_reverse`: impacts by the implicit
function theorem; equal to Taichi's reverse-mode AD, the fallback, to ~1e-13); forward
mode is Taichi's, of the same kernels.

Trust. ``forward`` refuses (SimulationError) a cannon still flying at the horizon
``steps·dt`` and a landing resolved by fewer than MIN_STEPS_PER_ARC steps per arc, unless
``strict=False``; :meth:`Projectile.refined_outputs` re-runs at dt/2 for step-doubling
error estimates. ``backward`` refuses a missing or stale forward pass and never
accumulates.

The time loop runs on :class:`diffsim.tape.Tape` with the Fused launch policy: fused
into one kernel launch per segment of at most ``runtime.MAX_FUSED_STEPS`` steps, over
the batch; segment boundary states are stored, and the reverse pass runs the segments'
gradient kernels backwards (``_make_tape`` lists the kernels in the tape's contract). Launch latency
dominates small batches, so a forward pass is one launch (``whole``: start, every segment
and the objective, with the host copy of loss and outputs; 40 µs instead of 89 µs at
B = 1, two segments) and the hand-written backward pass another; Taichi's reverse (the
fallback) runs end.grad, the segments' grads, launch.grad and take_grad, which copies the
gradients out and clears them for the next pass. Batches of at most SERIAL_MAX_BATCH
cannons run their batch loops serially (a parallel dispatch costs ~150 µs here, a serial
one ~20-40 µs).
"""

import math

import numpy as np
from ..backend import ti

from .. import runtime, tape
from ..errors import DiffsimError, SimulationError
from ..ode.solvers import make_solver, stored
from ..tape import tangent_mode  # noqa: F401  (its home was here; mass_spring imported it)

#: the cannon's integrators: solvers of the registry (diffsim.ode.solvers.SOLVERS), whose
#: names, orders and tableaux (so step and adjoint) they share. Leapfrog is left out: with
#: drag (velocity-dependent) it is first order, not the registry's 2, which would make
#: the cannon's Richardson error estimates wrong.
INTEGRATORS = ("semi_implicit_euler", "euler", "midpoint", "rk4")
#: names the cannon used before it took the registry's: refused, naming the new one
RENAMED_INTEGRATORS = {"symplectic_euler": "semi_implicit_euler"}

#: per-cannon inputs that carry gradients, in this order everywhere
INPUTS = ("x0", "height", "z0", "speed", "angle", "azimuth",
          "gravity", "drag", "wind_x", "wind_z", "restitution", "target_x", "target_z")
#: per-cannon outputs
OUTPUTS = ("land_x", "land_z", "land_t")
OBJECTIVES = ("miss", "range", "flight_time")
# Row of each name in the packed input/output fields (inp[I_SPEED, b], out_f[O_LAND_X, b]).
(I_X0, I_HEIGHT, I_Z0, I_SPEED, I_ANGLE, I_AZIMUTH, I_GRAVITY, I_DRAG, I_WIND_X, I_WIND_Z,
 I_RESTITUTION, I_TARGET_X, I_TARGET_Z) = range(len(INPUTS))
O_LAND_X, O_LAND_Z, O_LAND_T = range(len(OUTPUTS))
# Rows after the outputs in the host buffer a forward pass fills (Projectile._res):
# alive at the horizon, bounces made, and the loss (in column 0).
R_ALIVE, R_BOUNCES, R_LOSS, R_TERM = range(len(OUTPUTS), len(OUTPUTS) + 4)
_NEWTON = 4  # 6 made the RK4 reverse kernel segfault (autodiff stack on the native stack)
#: A landing reached in fewer steps per arc than this is refused by ``forward(strict=True)``:
#: the event and the integrator are then too coarse for a trustworthy answer.
MIN_STEPS_PER_ARC = 16
#: Batches up to this size run their batch loops serially (launch latency), larger ones
#: in parallel; ``Projectile(serial=...)`` overrides.
SERIAL_MAX_BATCH = 64


def step_functions(integrator):
    """The cannon's dynamics as Taichi functions, (accel, advance), made on each call
    (never at import, which would fix the backend). One implementation serves the forward
    kernels (and so Taichi's autodiff and forward mode of them) and the hand-written
    adjoint (:mod:`.projectile_reverse`), which must recompute the forward states exactly.

    accel(vx, vy, vz, g, k, wx, wz): gravity g [m/s²] and quadratic drag k [1/m] relative
    to the wind (wx, 0, wz) [m/s]: a = -g·ŷ - k·|v - w|·(v - w), a 3-vector [m/s²].
    advance(vx, vy, vz, g, k, wx, wz, h): one step of h seconds from velocity v by
    ``integrator`` (a name in INTEGRATORS), built from the solver registry's tableau
    (:class:`diffsim.ode.solvers.Partitioned`, the one implementation every system
    shares): a 6-vector, the position increment [m] then the end velocity [m/s] (the step
    is a translation in position). Also returns the tableau, from which the adjoint
    builds the step's reverse mode."""

    @ti.func
    def accel(vx, vy, vz, g, k, wx, wz):
        rx, ry, rz = vx - wx, vy, vz - wz
        sp = ti.sqrt(rx * rx + ry * ry + rz * rz)
        return ti.Vector([-k * sp * rx, -g - k * sp * ry, -k * sp * rz])

    tab = make_solver(integrator).partitioned   # the registry's method, as a tableau

    def accel_of(t, q, v, g, k, wx, wz):   # trace time: the tableau's a(t, q, v)
        rx, ry, rz = stored(v[0] - wx, v[1], v[2] - wz)
        sp = stored(ti.sqrt(rx * rx + ry * ry + rz * rz))[0]
        return list(stored(-k * sp * rx, -g - k * sp * ry, -k * sp * rz))

    def step(vx, vy, vz, g, k, wx, wz, h):
        # trace time; position-free (q = None): the dynamics are translation-invariant
        dq, v1 = tab.step(accel_of, None, None, [vx, vy, vz], h, (g, k, wx, wz))
        return tuple(dq + v1)

    @ti.func
    def advance(vx, vy, vz, g, k, wx, wz, h):
        return ti.Vector(ti.static(step(vx, vy, vz, g, k, wx, wz, h)))

    return accel, advance, tab, step


class Projectile(runtime.RuntimeBound):
    """B projectiles integrated together; gradients of a scalar objective by reverse AD.

    batch: number of cannons B. steps: fixed time steps of ``dt`` seconds each (the
    horizon ``steps·dt``; a cannon that lands earlier stops). dims: 2 (x, y) or 3 (x, y, z).
    integrator: "rk4" (default: 4th order), "midpoint" (2nd order; both exact in vacuum),
    "semi_implicit_euler" or "euler" (1st order). bounces: impacts that bounce before the one that lands; an
    impact with restitution 0 is always the landing (the ball cannot leave the ground).
    serial: run the batch loops serially (True) or in parallel (False); None (default)
    picks serial for B <= SERIAL_MAX_BATCH. Both give the same numbers up to round-off.

    Defaults of the inputs: speed 30 m/s, angle 0.7 rad, gravity 9.81 m/s², everything
    else 0 (no drag, no wind, restitution 0, launch at the origin).
    :meth:`forward` refuses (SimulationError) a cannon still flying at the horizon or
    landing within fewer than ``MIN_STEPS_PER_ARC`` steps per arc, unless ``strict=False``.
    """

    def __init__(self, batch=1, *, steps=1000, dt=0.01, dims=2,
                 integrator="rk4", bounces=0, serial=None):
        info = self._bind_runtime()
        if not (isinstance(batch, (int, np.integer)) and batch >= 1):
            raise DiffsimError(f"batch must be a positive integer, got {batch!r}")
        if not (isinstance(steps, (int, np.integer)) and steps >= 1):
            raise DiffsimError(f"steps must be a positive integer, got {steps!r}")
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise DiffsimError(f"dt must be a positive finite number of seconds, got {dt!r}")
        if integrator in RENAMED_INTEGRATORS:
            raise DiffsimError(f"integrator={integrator!r} was renamed "
                               f"{RENAMED_INTEGRATORS[integrator]!r} (the solver registry's "
                               "name for it, shared by every system)")
        if integrator not in INTEGRATORS:
            raise DiffsimError(f"integrator={integrator!r} is not known; use one of {', '.join(INTEGRATORS)}")
        if dims not in (2, 3):
            raise DiffsimError(f"dims must be 2 or 3, got {dims!r}")
        if not (isinstance(bounces, int) and bounces >= 0):
            raise DiffsimError(f"bounces must be an integer >= 0, got {bounces!r}")
        if serial not in (None, True, False):
            raise DiffsimError(f"serial must be None (automatic), True or False, got {serial!r}")
        self.B, self.steps, self.dt, self.dims = int(batch), int(steps), float(dt), dims
        self.integrator, self.bounces = integrator, bounces
        # Small batches run their batch loops serially: a parallel launch costs ~150 µs
        # of dispatch here, a serial one ~20-40 µs (docs/taichi-notes.md item 24). Safe
        # for autodiff because batch iterations are independent; the time loop stays
        # inside the batch loop (item 1).
        self._policy = tape.Fused(serial_max_batch=SERIAL_MAX_BATCH)
        self.serial = self._policy.serial(self.B) if serial is None else bool(serial)
        real = info.real
        runtime.check_memory(self.nbytes(self.B, self.steps, np.dtype(info.numpy_dtype).itemsize),
                             what=f"a projectile batch of {self.B} cannons × {self.steps} steps",
                             key="batch × steps", value=(self.B, self.steps))
        self.segs = [(p.t0, p.n) for p in self._policy.pieces(self.steps)]  # = the tape's
        self.real, self.np_real = real, info.numpy_dtype
        B, K = self.B, len(self.segs)
        # Inputs and outputs are packed in one 2-D field each, so moving them between
        # numpy and Taichi costs one copy (a kernel launch) instead of one per name.
        # needs_dual: forward-mode (tangent) sweeps, see forward_tangent()
        self.inp = ti.field(real, (len(INPUTS), B), needs_grad=True, needs_dual=True)
        self.out = ti.field(real, (len(OUTPUTS), B), needs_grad=True, needs_dual=True)
        self.state = [ti.field(real, (K + 1, B), needs_grad=True, needs_dual=True) for _ in range(6)]
        self.alive = ti.field(ti.i32, (K + 1, B))
        self.nbounce = ti.field(ti.i32, (K + 1, B))
        self.weight = ti.field(real, B)
        self.loss = ti.field(real, (), needs_grad=True, needs_dual=True)
        # each cannon's term of the loss, written by the forward-only end_fwd: its dual is
        # d term_b / d seed, per cannon, in a forward-mode sweep
        self.loss_b = ti.field(real, B, needs_dual=True)
        self._traj = None
        self._dummy = ti.Vector.field(3, real, (1, 1))
        self._segf = ti.field(ti.i32, (K, 2))    # the schedule, for the one-launch forward
        self._segf.from_numpy(np.asarray(self.segs, dtype=np.int32).reshape(K, 2))
        # Host copies: the inputs as last set (set_inputs is the only writer of inp), and
        # buffers that one kernel launch fills (ndarray arguments, no separate copy launch).
        self._inp_np = np.zeros((len(INPUTS), B))
        self._res = np.zeros((R_TERM + 1, B), dtype=np.float64)
        self._grad = np.zeros((len(INPUTS), B), dtype=np.float64)
        self._summary = None       # outputs() of the last forward pass, from self._res
        self._objective_kind = None
        self._compile()
        self._tape = self._make_tape()
        # sensible defaults so a bare Projectile runs
        self.set_inputs(speed=30.0, angle=0.7, gravity=9.81)
        self.weight.fill(1.0)
        # zero gradients, seed loss.grad = 1: take_grad leaves them so after each backward()
        self._tape.clear_grads()

    def _make_tape(self):
        """The driver of the time loop (diffsim.tape): these kernels in its contract."""
        k, res, grad, dummy, dt = self._k, self._res, self._grad, self._dummy, self.dt
        end_fwd, take_grad = k["end_fwd"], k["take_grad"]
        # forward: start zeroes the outputs and sets the initial state; the reverse runs
        # launch.grad (start's differentiable part) and end.grad (end_fwd without its
        # host copy, an ndarray argument). take_grad copies the gradients out and
        # leaves them cleared, with loss.grad = 1, for the next reverse sweep.
        return tape.Tape(tape.Kernels(
            start=k["start"], segment=k["segment"],
            finish=lambda kind, sign: end_fwd(kind, sign, res),
            segment_args=lambda p, s: (p.k, p.t0, p.n, dt / s.refine, dummy, False, dummy),
            start_grad=lambda: k["launch"].grad(), finish_grad=k["end"].grad,
            clear_grads=k["clear"], read_grads=lambda: take_grad(grad), read_resets_grads=True,
            dual_loss=self.loss, clear_duals=k["clear_duals"], tangent_finish=k["end_tangent"],
            whole=lambda kind, sign: k["whole"](kind, sign, len(self.segs), res)),
            self._policy, self.steps)

    @staticmethod
    def nbytes(batch, steps, real_bytes=8):
        """Bytes of Taichi fields a Projectile(batch, steps=steps) allocates (values,
        gradients and forward-mode duals; the trajectory of :meth:`trace` /
        :meth:`record_states` is extra: (steps+1)·batch·6 reals)."""
        k = tape.Fused().slots(steps) - 1
        per_cannon = 3 * (len(INPUTS) + len(OUTPUTS) + 6 * (k + 1)) * real_bytes + 8 * (k + 1)
        return float(batch) * (per_cannon + 3 * real_bytes)   # + weight, loss_b and its dual

    # -- kernels ---------------------------------------------------------------------
    def _compile(self):
        dims3 = self.dims == 3
        integ = self.integrator
        inp, out_f, S = self.inp, self.out, self.state
        alive, nb, loss, weight = self.alive, self.nbounce, self.loss, self.weight
        loss_b = self.loss_b
        max_bounce = self.bounces
        B = self.B
        serial = self.serial

        accel, advance, _, step = step_functions(integ)

        def integrate(px, py, pz, vx, vy, vz, g, k, wx, wz, dt):
            """Trace time (call in ti.static): one step; (x, y, z, vx, vy, vz) at its end,
            as stored scalars (not a vector from a ti.func, whose subscripts Quadrants'
            forward mode fails to compile: taichi-notes 43)."""
            st = step(vx, vy, vz, g, k, wx, wz, dt)
            return stored(px + st[0], py + st[1], pz + st[2], st[3], st[4], st[5])

        @ti.func
        def impact_fraction(y0, y1, m0, m1):
            """Root s in [0,1] of the cubic Hermite y(s) with y(0)=y0>=0 > y1=y(1) and
            end slopes m0, m1 (= dt·vy); Newton from the linear guess.

            A step that starts ON the ground going up (y0 = 0, m0 > 0: a launch from
            height 0, or a ball resting at y = 0 after a bounce) has the trivial root
            s = 0, which is the take-off, not an impact: the impact is then the root of
            the deflated cubic y(s)/s. One Newton loop serves both (the deflated cubic's
            coefficients are the cubic's shifted down), which keeps the reverse kernel's
            compile time down. y0 = 0 going down: the impact is the step's start."""
            # y(s) = ((c3·s + c2)·s + c1)·s + c0
            c3 = 2 * y0 + m0 - 2 * y1 + m1
            c2 = -3 * y0 - 2 * m0 + 3 * y1 - m1
            a3, a2, a1, a0, num = c3, c2, m0, y0, y0
            if y0 <= 0.0:
                if m0 > 0.0:
                    a3, a2, a1, a0, num = 0.0, c3, c2, m0, m0
                else:
                    a3, a2, a1, a0, num = 0.0, 0.0, 1.0, 0.0, 0.0  # p(s) = s: root 0
            s = num / (num - y1)
            for _ in ti.static(range(_NEWTON)):
                f = ((a3 * s + a2) * s + a1) * s + a0
                df = (3 * a3 * s + 2 * a2) * s + a1
                s = ti.min(ti.max(s - f / df, 0.0), 1.0)
            return s

        def hermite(x0, x1, m0, m1, s):
            """Trace time (call in ti.static): the cubic Hermite through (x0, slope m0) at
            s=0 and (x1, m1) at s=1: its value and d/ds (divide by dt for a rate per
            second), stored scalars (taichi-notes 43)."""
            d3, d2 = stored(2 * (x0 - x1) + m0 + m1, 3 * (x1 - x0) - 2 * m0 - m1)
            return stored(((d3 * s + d2) * s + m0) * s + x0, (3 * d3 * s + 2 * d2) * s + m0)

        @ti.func
        def launch_one(b):
            sp, el = inp[I_SPEED, b], inp[I_ANGLE, b]
            az = 0.0
            if ti.static(dims3):
                az = inp[I_AZIMUTH, b]
            S[0][0, b] = inp[I_X0, b]
            S[1][0, b] = inp[I_HEIGHT, b]
            S[2][0, b] = inp[I_Z0, b]
            S[3][0, b] = sp * ti.cos(el) * ti.cos(az)
            S[4][0, b] = sp * ti.sin(el)
            S[5][0, b] = sp * ti.cos(el) * ti.sin(az)
            alive[0, b] = 1
            nb[0, b] = 0

        @ti.kernel
        def launch():
            """Initial state from the inputs; differentiated by backward() (launch.grad)."""
            ti.loop_config(serialize=serial)
            for b in range(B):
                launch_one(b)

        @ti.func
        def start_one(b):
            # zero the outputs (a forward pass accumulates into them), the initial state
            for j in ti.static(range(len(OUTPUTS))):
                out_f[j, b] = 0.0
            launch_one(b)

        @ti.kernel
        def start():
            """Forward only: zero the loss and the outputs and set the initial state, in
            one launch."""
            loss[None] = 0.0
            ti.loop_config(serialize=serial)
            for b in range(B):
                start_one(b)

        @ti.func
        def segment_one(b, k, t0, n, dt: ti.template(), traj: ti.template(),
                        record: ti.template(), events: ti.template()):
            # record (forward only, trace/record_states): traj[t, b] = the 6 state
            # components at every step, events[j, b] = (global step index, fraction s,
            # state just before impact j (6), just after it (6); after a landing: at rest)
            px, py, pz = S[0][k, b], S[1][k, b], S[2][k, b]
            vx, vy, vz = S[3][k, b], S[4][k, b], S[5][k, b]
            live, bounced = alive[k, b], nb[k, b]
            g, kd, e = inp[I_GRAVITY, b], inp[I_DRAG, b], inp[I_RESTITUTION, b]
            # one assignment each: Quadrants 1.3.3 gave a wind_z gradient 1/n of the
            # truth when wz was set to 0 and then overwritten here (a mutable local
            # read before the time loop; taichi-notes 33)
            wx = inp[I_WIND_X, b]
            wz = inp[I_WIND_Z, b] if ti.static(dims3) else 0.0
            lx, lz, lt = 0.0, 0.0, 0.0
            for i in range(n):
                if live == 1:
                    nx, ny, nz, nvx, nvy, nvz = ti.static(integrate(px, py, pz, vx, vy, vz, g, kd, wx, wz, dt))
                    if ny < 0.0:
                        s = impact_fraction(py, ny, dt * vy, dt * nvy)
                        hx = ti.static(hermite(px, nx, dt * vx, dt * nvx, s))
                        ix, iz = hx[0], pz
                        # Impact velocity. RK4: the derivative of the same Hermite
                        # cubic, O(dt³) (a linear blend of the end velocities is O(dt²)
                        # and made bounced landings first-order). Euler methods: their
                        # chord is not the cubic's, whose derivative then jumps in slope
                        # when an impact crosses a step boundary (objective kinks
                        # measured 10× the true slope), so the linear blend, first-
                        # order like the method.
                        ivx = vx + s * (nvx - vx)
                        ivz = vz + s * (nvz - vz)
                        if ti.static(integ == "rk4"):
                            ivx = hx[1] / dt
                        if ti.static(dims3):
                            hz = ti.static(hermite(pz, nz, dt * vz, dt * nvz, s))
                            iz = hz[0]
                            if ti.static(integ == "rk4"):
                                ivz = hz[1] / dt
                        # e = 0 kills the vertical velocity: the ball never leaves
                        # the ground again, so this impact is the landing (a bounce
                        # with e = 0 would re-land at the next step's start, on the
                        # time grid, with a wrong gradient).
                        # bounces=0: a constant False, so the bounce branch and the
                        # bounce counter vanish from the kernel (one autodiff stack less)
                        bounce = (bounced < max_bounce and e > 0.0) if ti.static(max_bounce > 0) else False
                        if bounce:
                            # The rest of the step starts at the impact with the
                            # reflected velocity, integrated by the same method, so
                            # the state is continuous in the impact phase s (a
                            # remainder without gravity gave a sawtooth objective).
                            r = (1.0 - s) * dt
                            ivy = vy + s * (nvy - vy)
                            if ti.static(integ == "rk4"):
                                ivy = ti.static(hermite(py, ny, dt * vy, dt * nvy, s))[1] / dt
                            q2 = ti.static(integrate(ix, 0.0, iz, ivx, -e * ivy, ivz, g, kd, wx, wz, r))
                            if ti.static(record):
                                events[bounced, b] = ti.Vector([
                                    t0 + i, s, ix, 0.0, iz, ivx, ivy, ivz,
                                    ix, 0.0, iz, ivx, -e * ivy, ivz])
                            bounced += 1
                            # the state is assigned last: everything above reads the
                            # step's start
                            px, py, vx, vy = q2[0], ti.max(q2[1], 0.0), q2[3], q2[4]
                            if ti.static(dims3):
                                pz, vz = q2[2], q2[5]
                        else:
                            if ti.static(record):
                                jvy = vy + s * (nvy - vy)
                                if ti.static(integ == "rk4"):
                                    jvy = ti.static(hermite(py, ny, dt * vy, dt * nvy, s))[1] / dt
                                events[bounced, b] = ti.Vector([
                                    t0 + i, s, ix, 0.0, iz, ivx, jvy, ivz,
                                    ix, 0.0, iz, 0.0, 0.0, 0.0])
                            lx, lt = ix, (t0 + i + s) * dt
                            px, py, vx, vy = ix, 0.0, 0.0, 0.0
                            if ti.static(dims3):
                                lz = iz
                                pz, vz = iz, 0.0
                            live = 0
                    else:
                        # nx … nvz are assigned once per step (never overwritten by
                        # the impact branch), so they need no autodiff stack of
                        # their own: only the carried state does (taichi-notes 36)
                        px, py, vx, vy = nx, ny, nvx, nvy
                        if ti.static(dims3):
                            # in 2D z and vz stay as launched (vz = 0, nz = pz
                            # exactly): not carrying them saves two stacks more
                            pz, vz = nz, nvz
                if ti.static(record):
                    traj[t0 + i + 1, b] = ti.Vector([px, py, pz, vx, vy, vz])
            S[0][k + 1, b], S[1][k + 1, b], S[2][k + 1, b] = px, py, pz
            S[3][k + 1, b], S[4][k + 1, b], S[5][k + 1, b] = vx, vy, vz
            alive[k + 1, b], nb[k + 1, b] = live, bounced
            out_f[O_LAND_X, b] += lx
            out_f[O_LAND_Z, b] += lz
            out_f[O_LAND_T, b] += lt

        @ti.kernel
        def segment(k: ti.i32, t0: ti.i32, n: ti.i32, dt: ti.template(),
                    traj: ti.template(), record: ti.template(), events: ti.template()):
            ti.loop_config(serialize=serial)
            for b in range(B):
                segment_one(b, k, t0, n, dt, traj, record, events)

        K = len(self.segs)
        t_end = self.steps * self.dt

        @ti.func
        def finish_one(b, kK):
            # A cannon still flying at the horizon "lands" where it is, at t_end; the
            # summary flags it (landed = False). kK: the last checkpoint slot (K).
            if alive[kK, b] == 1:
                out_f[O_LAND_X, b] += S[0][kK, b]
                out_f[O_LAND_Z, b] += S[2][kK, b]
                out_f[O_LAND_T, b] += t_end

        @ti.func
        def objective_one(b, kind, sign):
            val = 0.0
            if kind == 0:
                dx = out_f[O_LAND_X, b] - inp[I_TARGET_X, b]
                dz = out_f[O_LAND_Z, b] - inp[I_TARGET_Z, b]
                val = 0.5 * (dx * dx + dz * dz)
            elif kind == 1:
                dx = out_f[O_LAND_X, b] - inp[I_X0, b]
                dz = out_f[O_LAND_Z, b] - inp[I_Z0, b]
                if ti.static(dims3):
                    val = ti.sqrt(dx * dx + dz * dz)
                else:
                    val = dx
            else:
                val = out_f[O_LAND_T, b]
            term = sign * weight[b] * val
            loss[None] += term
            return term

        @ti.kernel
        def end(kind: ti.i32, sign: ti.template()):
            """Horizon landings, then the objective into ``loss``; differentiated by
            backward() (end.grad). Two top-level loops, reversed in order by autodiff."""
            ti.loop_config(serialize=serial)
            for b in range(B):
                finish_one(b, K)
            ti.loop_config(serialize=serial)
            for b in range(B):
                objective_one(b, kind, sign)

        @ti.kernel
        def end_fwd(kind: ti.i32, sign: ti.template(), res: ti.types.ndarray(dtype=ti.f64, ndim=2)):
            """Forward only: what ``end`` computes, and in the same launch a host copy
            into ``res`` (copy_one; one launch instead of a to_numpy and a field read
            each)."""
            ti.loop_config(serialize=serial)
            for b in range(B):
                finish_one(b, K)
            ti.loop_config(serialize=serial)
            for b in range(B):
                report_one(b, kind, sign, res, K)
            res[R_LOSS, 0] = loss[None]

        @ti.func
        def report_one(b, kind, sign, res: ti.template(), kK):
            # cannon b's objective term into loss (and its row R_TERM), outputs to host
            res[R_TERM, b] = objective_one(b, kind, sign)
            copy_one(b, res, kK)

        @ti.func
        def copy_one(b, res: ti.template(), kK):
            # rows land_x, land_z, land_t, alive, bounces; res[R_LOSS, 0] = loss
            for j in ti.static(range(len(OUTPUTS))):
                res[j, b] = out_f[j, b]
            res[R_ALIVE, b] = ti.cast(alive[kK, b], ti.f64)
            res[R_BOUNCES, b] = ti.cast(nb[kK, b], ti.f64)

        segf, dt_, dummy = self._segf, self.dt, self._dummy

        @ti.kernel
        def whole(kind: ti.i32, sign: ti.template(), kK: ti.i32,
                  res: ti.types.ndarray(dtype=ti.f64, ndim=2)):
            """Forward only: start, every segment and end_fwd in one launch, the same
            values as those launches (the tape's ``whole``; launch overhead is most of a
            small batch's forward pass). kK = K at run time: a field read at a constant
            index after the segment loop wrote it at run-time indices is the stale-read
            pattern of taichi-notes 42."""
            loss[None] = 0.0
            ti.loop_config(serialize=serial)
            for b in range(B):
                start_one(b)
                for k in range(kK):
                    segment_one(b, k, segf[k, 0], segf[k, 1], dt_, dummy, False, dummy)
                finish_one(b, kK)
            ti.loop_config(serialize=serial)
            for b in range(B):
                report_one(b, kind, sign, res, kK)
            res[R_LOSS, 0] = loss[None]

        @ti.kernel
        def end_tangent(kind: ti.i32, sign: ti.template()):
            """What ``end`` computes, and each cannon's term of the loss into loss_b: run in
            forward (tangent) mode by forward_tangent (an ndarray argument, as end_fwd's,
            does not compile in forward mode)."""
            ti.loop_config(serialize=serial)
            for b in range(B):
                finish_one(b, K)
            ti.loop_config(serialize=serial)
            for b in range(B):
                loss_b[b] = objective_one(b, kind, sign)

        @ti.kernel
        def clear_duals():
            """Zero every dual a tangent sweep writes (outputs, loss, states): Taichi's
            forward mode turns each store into a field into an *addition* to its dual
            (ti.ad.FwdMode clears all duals on entry for that reason; measured: without
            this, each sweep's tangent added to the last's)."""
            loss.dual[None] = 0.0
            ti.loop_config(serialize=serial)
            for b in range(B):
                for j in ti.static(range(len(OUTPUTS))):
                    out_f.dual[j, b] = 0.0
                loss_b.dual[b] = 0.0
                for kk in range(K + 1):
                    for f in ti.static(S):
                        f.dual[kk, b] = 0.0

        @ti.kernel
        def copy_out(res: ti.types.ndarray(dtype=ti.f64, ndim=2)):
            """Forward only: end_fwd's host copy, after a tangent sweep."""
            ti.loop_config(serialize=serial)
            for b in range(B):
                copy_one(b, res, K)
                res[R_TERM, b] = loss_b[b]
            res[R_LOSS, 0] = loss[None]

        @ti.func
        def clear_grads(b):
            for j in ti.static(range(len(INPUTS))):
                inp.grad[j, b] = 0.0
            for j in ti.static(range(len(OUTPUTS))):
                out_f.grad[j, b] = 0.0
            for kk in range(K + 1):
                for f in ti.static(S):
                    f.grad[kk, b] = 0.0

        @ti.kernel
        def clear():
            """Zero every gradient and seed loss.grad = 1: the state backward() starts from."""
            loss.grad[None] = 1.0
            ti.loop_config(serialize=serial)
            for b in range(B):
                clear_grads(b)

        @ti.kernel
        def take_grad(g: ti.types.ndarray(dtype=ti.f64, ndim=2)):
            """Copy d loss / d inputs into ``g`` and reset to the ``clear`` state, in one
            launch: backward() leaves the gradients ready for the next backward()."""
            loss.grad[None] = 1.0
            ti.loop_config(serialize=serial)
            for b in range(B):
                for j in ti.static(range(len(INPUTS))):
                    g[j, b] = inp.grad[j, b]
                clear_grads(b)

        self._k = dict(launch=launch, start=start, segment=segment, end=end, end_fwd=end_fwd, whole=whole,
                       end_tangent=end_tangent, copy_out=copy_out,
                       clear_duals=clear_duals, clear=clear, take_grad=take_grad)


    # -- inputs / outputs ------------------------------------------------------------
    def set_inputs(self, **values) -> None:
        """Set per-cannon inputs by name: a scalar (all cannons) or an array of shape (B,)."""
        self._check_runtime()
        for name in values:
            if name not in INPUTS:
                raise DiffsimError(f"unknown projectile input {name!r}; known: {', '.join(INPUTS)}")
        a = self._inp_np.copy()
        for name, v in values.items():
            try:
                a[INPUTS.index(name)] = np.broadcast_to(np.asarray(v, dtype=np.float64), (self.B,))
            except (ValueError, TypeError, OverflowError) as e:
                raise DiffsimError(f"projectile input {name!r} must be a number or an array of "
                                   f"{self.B} numbers: {e}") from None
        a = a.astype(self.np_real)
        self.inp.from_numpy(a)
        self._inp_np = a.astype(np.float64)  # what inp holds, read back without a launch
        self._tape.inputs_changed()

    def get_inputs(self):
        """Current inputs: name -> array (B,)."""
        a = self._inp_np.copy()
        return {n: a[j] for j, n in enumerate(INPUTS)}

    def forward(self, objective="miss", maximize=False, *, strict=True) -> float:
        """Simulate every cannon; returns the batch objective (sum over cannons).

        objective: "miss" (½·squared distance from landing point to target, m²),
        "range" (horizontal landing distance from the launch point, m) or
        "flight_time" (s); ``maximize`` negates it.
        strict: refuse (SimulationError) when a cannon is still flying at the horizon
        (its "landing" would be its mid-air position at steps·dt) or landed within fewer
        than MIN_STEPS_PER_ARC steps per arc. With ``strict=False`` those results are
        returned; :meth:`outputs` flags them (``landed``, ``steps_per_arc``).
        """
        self._check_runtime()
        if objective not in OBJECTIVES:
            raise DiffsimError(f"objective={objective!r} is not known; use one of {', '.join(OBJECTIVES)}")
        self._objective_args = (OBJECTIVES.index(objective), -1.0 if maximize else 1.0)
        self._sweep(1, self._objective_args)
        self._summary = self._res.copy()
        val = float(self._res[R_LOSS, 0])
        if not math.isfinite(val):
            raise SimulationError(
                f"the simulation produced {val} (it blew up): dt={self.dt} s may be too large "
                "for this drag and speed, or a parameter is NaN; lower sim.dt or check the inputs")
        if strict:
            msg = self.horizon_problem() or self.resolution_problem()
            if msg:
                raise SimulationError(msg + " (forward(strict=False) returns it anyway)")
        self._tape.accept()
        return val

    def _sweep(self, factor, objective_args, tangent=False):
        """One forward pass with steps of dt/factor over the horizon; results in self._res.
        Invalidates the last forward pass's tape (a new one is being written; forward()
        accepts it after its checks). tangent: run it in forward-mode AD from the seeded
        duals (forward_tangent)."""
        self._check_stability()
        self._summary = None
        if tangent:
            self._tape.tangent(objective_args, refine=factor)
            self._k["copy_out"](self._res)
            return
        self._tape.forward(objective_args, refine=factor, accept=False)

    def refined_outputs(self, factor=2):
        """:meth:`outputs` of the same batch simulated with steps of ``dt/factor`` over
        the same horizon (forward only: no autodiff stack, so a segment may run
        ``factor`` × as many steps). The last forward pass's tape is invalidated."""
        self._check_runtime()
        if not (isinstance(factor, int) and factor >= 1):
            raise DiffsimError(f"factor must be a positive integer, got {factor!r}")
        self._sweep(factor, (2, 1.0))
        self._summary = self._res.copy()
        o = self.outputs()
        o["steps_per_arc"] *= factor
        return o

    def horizon_problem(self):
        """After a forward pass: None when every cannon landed, else a sentence saying how
        many had not by the horizon and about how many steps would let them land."""
        K = len(self.segs)
        o = self.outputs()  # no launch after forward(): its host copy
        flying = ~o["landed"]
        if not flying.any():
            return None
        t_end = self.steps * self.dt
        y = self.state[1].to_numpy()[K].astype(np.float64)[flying]
        vy = self.state[4].to_numpy()[K].astype(np.float64)[flying]
        g = self._inp_np[I_GRAVITY][flying]
        left = self.bounces - o["bounces"][flying] + 1
        # vacuum time to come down from here, and each bounce left like the first
        # launch; drag slows the fall, hence the 1.5 margin ("about")
        with np.errstate(all="ignore"):
            t_rem = np.where(g > 0, (vy + np.sqrt(vy * vy + 2 * g * np.maximum(y, 0))) / g, np.inf)
            need = 1.5 * (t_end + float(np.max(t_rem * left)))
        hint = (f"about steps = {math.ceil(need / self.dt)} (t_max ≈ {need:.3g} s)"
                if math.isfinite(need) and need / self.dt < 1e12 else "a longer horizon")
        return (f"{int(flying.sum())} of {self.B} cannons had not landed by the horizon "
                f"steps·dt = {self.steps}·{self.dt:g} s = {t_end:.4g} s, so their landing "
                f"point is their mid-air position; use {hint}")

    def resolution_problem(self):
        """After a forward pass: None when every landed cannon took at least
        MIN_STEPS_PER_ARC steps per arc (flight and bounces), else a sentence naming the
        coarsest and a dt that resolves it."""
        o = self.outputs()
        spa = o["steps_per_arc"]
        bad = o["landed"] & (spa < MIN_STEPS_PER_ARC)
        if not bad.any():
            return None
        i = int(np.argmin(np.where(bad, spa, np.inf)))
        arc = o["land_t"][i] / (o["bounces"][i] + 1)
        return (f"{int(bad.sum())} of {self.B} cannons landed within fewer than "
                f"{MIN_STEPS_PER_ARC} steps per arc (cannon {i}: {spa[i]:.3g} steps of "
                f"dt = {self.dt:g} s per {arc:.3g} s arc): the step is too coarse for a "
                f"trustworthy answer; use dt <= {arc / (4 * MIN_STEPS_PER_ARC):.3g} s")

    def _check_stability(self):
        # An explicit step of dv/dt = -k|v|v is stable only for dt·k·|v| < 1; beyond it the
        # speed flips sign and grows every step: finite but meaningless numbers.
        a = self._inp_np
        k, g = a[I_DRAG], a[I_GRAVITY]
        v = np.abs(a[I_SPEED]) + np.hypot(a[I_WIND_X], a[I_WIND_Z])
        vterm = np.sqrt(np.where(k > 0, g / np.where(k > 0, k, 1.0), 0.0))
        worst = float(np.max(self.dt * k * np.maximum(v, vterm)))
        if worst > 1.0 or not np.all(np.isfinite(a)):
            bad = [n for j, n in enumerate(INPUTS) if not np.all(np.isfinite(a[j]))]
            if bad:
                raise SimulationError(f"input(s) {', '.join(bad)} are NaN or infinite")
            raise SimulationError(
                f"the simulation would blow up: dt·drag·speed = {worst:.3g} > 1 makes the "
                f"explicit step unstable; lower sim.dt below {self.dt / worst:.3g} s or the drag")

    def backward(self):
        """Reverse-mode sweep after :meth:`forward`; returns d objective / d input, each (B,).

        Gradients belong to the last forward pass: calling it again returns the same
        numbers (gradients are cleared first, never accumulated); it refuses when no
        forward pass ran or the inputs changed since (set_inputs, trace)."""
        self._check_runtime()
        self._tape.check_reverse()
        # the hand-written adjoint where it applies (None: the backend's autodiff below)
        from . import projectile_reverse
        g = projectile_reverse.backward(self)
        if g is not None:
            return g
        # Gradients are zero and loss.grad = 1 here: the constructor and every completed
        # backward() leave them so (take_grad), which saves a clearing launch per call; the
        # tape clears first after a backward that did not complete (Ctrl-C, an error).
        self._tape.backward(self._objective_args)
        g = self._grad.copy()
        return {n: g[j] for j, n in enumerate(INPUTS)}

    def forward_tangent(self, inputs, objective="miss", maximize=False, factor=1):
        """Forward-mode derivatives (the ``Forward`` gradient method): one tangent sweep per
        name in ``inputs`` through the same kernels as :meth:`forward`, compiled by Taichi's
        forward-mode AD (dual fields), so impacts, bounces and landings are differentiated
        exactly as :meth:`backward` does; the results equal backward()'s to round-off.

        Each sweep seeds input row ``name`` of every cannon at once: cannons are
        independent, so each cannon's own loss term gives its derivative. Returns (batch
        objective, {name: d objective / d input[name, b], shape (B,)}); the forward pass's
        outputs are left as :meth:`forward` leaves them (not strict: check
        horizon_problem/resolution_problem). Cost: len(inputs) forward sweeps of about
        2× a forward pass each; no tape, so backward() after it refuses. factor: steps of
        dt/factor (no autodiff stack in forward mode, so finer steps need no new segments;
        step-doubling error estimates use factor=2)."""
        self._check_runtime()
        if objective not in OBJECTIVES:
            raise DiffsimError(f"objective={objective!r} is not known; use one of {', '.join(OBJECTIVES)}")
        bad = [n for n in inputs if n not in INPUTS]
        if bad:
            raise DiffsimError(f"unknown projectile input(s) {bad}; known: {', '.join(INPUTS)}")
        args = (OBJECTIVES.index(objective), -1.0 if maximize else 1.0)
        seed = np.zeros((len(INPUTS), self.B), dtype=self.np_real)
        out, val = {}, math.nan
        try:
            for name in inputs:
                j = INPUTS.index(name)
                seed[j] = 1.0
                self.inp.dual.from_numpy(seed)   # outside FwdMode: a plain copy
                seed[j] = 0.0
                self._sweep(factor, args, tangent=True)
                out[name] = self.loss_b.dual.to_numpy().astype(np.float64)
                val = float(self._res[R_LOSS, 0])
        finally:
            self.inp.dual.fill(0.0)
            self._tape.invalidate()  # no reverse tape: backward() needs forward()
        if not inputs:
            self._sweep(factor, args)
            val = float(self._res[R_LOSS, 0])
        self._summary = self._res.copy()
        return val, out

    def outputs(self):
        """Landing x, z [m], time [s] per cannon, ``landed`` (False: still flying at the
        horizon; x, z, t are then its position at steps·dt), ``bounces`` made and
        ``steps_per_arc`` (land_t / dt / (bounces + 1), how finely each arc was resolved)."""
        self._check_runtime()
        if self._summary is not None:  # copied out by the pass's last launch
            a = self._summary.copy()
            d = {n: a[j] for j, n in enumerate(OUTPUTS)}
            d["landed"] = a[R_ALIVE] == 0
            d["bounces"] = a[R_BOUNCES].astype(np.int32)
        else:
            K = len(self.segs)
            a = self.out.to_numpy().astype(np.float64)
            d = {n: a[j] for j, n in enumerate(OUTPUTS)}
            d["landed"] = self.alive.to_numpy()[K] == 0
            d["bounces"] = self.nbounce.to_numpy()[K]
        d["steps_per_arc"] = d["land_t"] / self.dt / (d["bounces"] + 1)
        return d

    def terms(self) -> np.ndarray:
        """Each cannon's term of the last simulated objective (its weight and sign
        included; they add up to what forward() returned), shape (B,); written by the
        pass's last launch, so reading it costs none. After refined_outputs() the terms
        are its flight times."""
        self._check_runtime()
        if self._summary is None:
            raise DiffsimError("terms() needs a forward() first")
        return self._summary[R_TERM].copy()

    # -- trajectories (forward only, for plots) --------------------------------------
    def trace(self) -> np.ndarray:
        """Positions of every cannon at every step: shape (steps + 1, B, 3), metres
        (x, y up, z). Forward only; after landing a cannon stays at its landing point."""
        return self.record_states()[0][..., :3]

    def record_states(self, factor=1):
        """Forward only, with steps of dt/factor: (states (steps·factor + 1, B, 6): x, y, z,
        vx, vy, vz at every step [m, m/s]; events (bounces + 1, B, 14): per impact j the
        global step index it happened in (-1: none), its fraction s of that step, the state
        just before and just after it (after a landing: at rest on the ground)). The
        continuous adjoint (diffsim.systems.projectile_adjoint) integrates along these.
        Invalidates the last forward pass's tape."""
        self._check_runtime()
        if not (isinstance(factor, int) and factor >= 1):
            raise DiffsimError(f"factor must be a positive integer, got {factor!r}")
        if self._traj is None:
            self._traj = {}
        if factor not in self._traj:
            n = self.steps * factor + 1
            runtime.check_memory(n * self.B * 6 * np.dtype(self.np_real).itemsize,
                                 what=f"the trajectory of {self.B} cannons × {n - 1} steps",
                                 key="batch × steps", value=(self.B, n - 1))
            self._traj[factor] = (ti.Vector.field(6, self.real, (n, self.B)),
                                  ti.Vector.field(14, self.real, (self.bounces + 1, self.B)))
        traj, events = self._traj[factor]
        self._check_stability()
        self._summary = None
        events.fill(-1.0)
        dt = self.dt
        # a forward sweep that records every step (it overwrites the forward pass's tape);
        # traj[0] is the start state, which no segment writes
        self._tape.forward(refine=factor, accept=False, finish=False,
                           segment_args=lambda p, s: (p.k, p.t0, p.n, dt / s.refine, traj, True, events))
        self._k_first_row(traj)
        return traj.to_numpy().astype(np.float64), events.to_numpy().astype(np.float64)

    def _k_first_row(self, traj):
        S = self.state
        if not hasattr(self, "_first_row"):
            B = self.B

            @ti.kernel
            def first_row(traj: ti.template()):
                for b in range(B):
                    traj[0, b] = ti.Vector([S[0][0, b], S[1][0, b], S[2][0, b],
                                          S[3][0, b], S[4][0, b], S[5][0, b]])
            self._first_row = first_row
        self._first_row(traj)
