"""Integrators as small strategy objects: each builds a Taichi step function.

``solver.make_step(ode)`` returns ``@ti.func step(t, y, p, h) -> y_next`` (vectors of
n_state). Every stage is built componentwise (see :mod:`diffsim.ode.system`), so the
same step is differentiated by Taichi's reverse mode (method "discrete"), forward mode
(method "forward") and used by the continuous adjoint. ``order`` is the global order of
accuracy in h.
"""
import contextlib
import warnings

from ..backend import impl as _impl, ti

from ..controllers import ConstantStep, PIController, StepController
from ..errors import DiffsimError


@contextlib.contextmanager
def quiet_trace():
    """Silence Taichi's "Calling non-taichi function" SyntaxWarning while kernels are
    traced (compiled on first launch): the trace-time helpers here (_comb, pack, sum)
    build expressions on purpose. Local to the block: no global warnings filter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Calling non-(taichi|quadrants) function.*")
        yield


def _comb(n, cs):
    """Trace-time helper: y + h·Σ c_j k_j componentwise (zeros skipped), stored in a
    local variable. Storing matters: an expression handed on unstored is re-emitted at
    every use, so RK4's stages nest exponentially and a kernel took minutes to compile
    (measured: 0.2 s stored vs > 300 s unstored for Lotka–Volterra)."""
    idx = [j for j, c in enumerate(cs) if c != 0.0]

    def comb(y, h, ks):
        if not idx:
            return y
        vals = [_at(y, i) + h * sum([cs[j] * _at(ks[j], i) for j in idx]) for i in range(n)]
        if state_as_list():
            return [_local(v) for v in vals]
        return _local(ti.Vector(vals))
    return comb


def state_as_list():
    """Whether states are handed to user functions as lists of scalars instead of
    vectors: on Quadrants, whose reverse mode differentiates a vector built from the
    loop-carried state wrongly (docs/taichi-notes.md 33; a list of the same scalars is
    right). User functions index y componentwise, which both support."""
    from .. import backend
    return backend.name() == "quadrants"



def _local(v):
    """Store a Taichi expression in a new local variable (what `x = expr` does in a kernel)."""
    return _impl.expr_init(v)


def stored(*vals):
    """Trace-time: each value stored in a new local variable (what ``x = expr`` does in a
    kernel), as a tuple; for builders called inside ``ti.static(...)`` that hand scalars
    back instead of a vector."""
    return tuple(_local(v) for v in vals)


def _at(v, i):
    """v[i] for a Taichi vector expression, usable from trace-time Python helpers."""
    return _impl.subscript(None, v, i)


def components(v, d):
    """Trace-time: the d components of a Taichi vector expression, stored in a local,
    as a list of scalar expressions (what the :class:`Partitioned` builders take)."""
    loc = _local(v)
    return [_at(loc, i) for i in range(d)]


def _axpy(base, h, terms):
    """Trace-time: base + h·Σ c·vec componentwise, each component stored in a local; zero
    coefficients and None vectors (known zeros) skipped, c = 1 not multiplied. base None
    is zero, h None is 1. Returns None (a known zero) when nothing is left."""
    terms = [(c, vec) for c, vec in terms if c != 0.0 and vec is not None]
    if not terms:
        return base
    d = len(terms[0][1])
    out = []
    for k in range(d):
        acc = None
        for c, vec in terms:
            x = vec[k] if c == 1.0 else c * vec[k]
            acc = x if acc is None else acc + x
        if h is not None:
            acc = h * acc
        out.append(_local(acc if base is None else base[k] + acc))
    return out


def _add(x, y):
    """x + y componentwise for lists of scalars where None is a known zero."""
    if x is None or y is None:
        return y if x is None else x
    return [_local(a + b) for a, b in zip(x, y)]


class Partitioned:
    """An explicit partitioned Runge–Kutta tableau for second-order systems
    q' = v, v' = a(t, q, v) (positions q, velocities v, d components each). Stage i:

        V_i = v + h·Σ_{j<i} a_ij·A_j,   Q_i = q + h·Σ_{j≤i} â_ij·V_j,
        A_i = a(t + c_i·h, Q_i, V_i),
        Δq = h·Σ b̂_i·V_i,   v' = v + h·Σ b_i·A_i.

    An explicit RK method is the case â = a, b̂ = b; semi-implicit Euler and leapfrog use
    the newest velocity for the drift (â_ii ≠ 0, b̂ ≠ b). A stage whose acceleration
    nothing uses (semi-implicit Euler's second) is never evaluated.

    The step, its reverse-mode adjoint and its derivative in h are built from the tableau
    at trace time (:meth:`step`, :meth:`adjoint`, :meth:`dh`): one implementation per
    integrator, shared by every second-order system (the ODE solvers for
    ``ODE(second_order=True)``, the cannon, the mass-spring's mass update).
    """

    def __init__(self, a, b, ahat, bhat, c):
        self.s = len(b)
        self.a = [list(r) + [0.0] * (self.s - len(r)) for r in a]
        self.ahat = [list(r) + [0.0] * (self.s - len(r)) for r in ahat]
        self.b, self.bhat, self.c = list(b), list(bhat), list(c)
        s = self.s
        self.used = [self.b[i] != 0.0 or any(self.a[k][i] != 0.0 for k in range(i + 1, s))
                     for i in range(s)]

    @classmethod
    def from_rk(cls, a, b, c):
        """The partitioned form of an explicit RK tableau applied to (q, v)."""
        return cls(a, b, a, b, c)

    def _time(self, t, i, h):
        return t if t is None or self.c[i] == 0.0 else t + self.c[i] * h

    def stages(self, accel, t, q, v, h, args=()):
        """Trace-time: the stage values (Q, V, A), lists over stages of lists of d
        scalars. ``accel(t, Q_i, V_i, *args)`` returns a Taichi vector of d
        accelerations (or a list of d scalars); q None means the acceleration does not
        depend on the positions (then Q is not formed, and t may be None likewise)."""
        d = len(v)
        Q, V, A = [], [], []
        for i in range(self.s):
            Vi = _axpy(v, h, [(self.a[i][j], A[j]) for j in range(i)])
            V.append(Vi)
            Q.append(None if q is None else
                     _axpy(q, h, [(self.ahat[i][j], V[j]) for j in range(i + 1)]))
            Ai = None
            if self.used[i]:
                Ai = accel(self._time(t, i, h), Q[i], Vi, *args)
                Ai = list(Ai) if isinstance(Ai, list) else components(Ai, d)
            A.append(Ai)
        return Q, V, A

    def step(self, accel, t, q, v, h, args=()):
        """Trace-time: one step of h from (q, v); returns (Δq, v'), lists of d scalars
        (the position increment, so a caller that is translation-invariant need not
        carry q: pass q = None when the acceleration ignores it)."""
        Q, V, A = self.stages(accel, t, q, v, h, args)
        dq = _axpy(None, h, [(self.bhat[i], V[i]) for i in range(self.s)])
        return dq, _axpy(v, h, [(self.b[i], A[i]) for i in range(self.s)])

    def adjoint(self, accel, accel_vjp, t, q, v, h, args, dq_bar, v_bar):
        """Trace-time reverse mode of :meth:`step`: given the adjoints dq_bar of Δq and
        v_bar of v' (lists of d scalars), returns (q_bar, v_bar0, p_bar): the adjoints of
        q through the stages (None when q is None; a caller with q' = q + Δq adds
        dq_bar), of v, and of the acceleration's parameters summed over stages.
        ``accel_vjp(t, Q_i, V_i, Ā, *args)`` returns (Q̄ or None, V̄, p̄) for the
        vector-Jacobian product of Ā with a at stage i. The stages are recomputed from
        (q, v) first, so the forward states are the step's own."""
        Q, V, A = self.stages(accel, t, q, v, h, args)
        s = self.s
        Qb, Vb, pb = [None] * s, [None] * s, None
        for i in reversed(range(s)):
            va = None
            if self.used[i]:
                # A_i feeds v' (b_i) and the later stage velocities (a_ki)
                Ab = _axpy(None, h, [(self.b[i], v_bar)] +
                           [(self.a[k][i], Vb[k]) for k in range(i + 1, s)])
                if Ab is not None:
                    Qb[i], va, pa = accel_vjp(self._time(t, i, h), Q[i], V[i], Ab, *args)
                    pb = _add(pb, pa)
            # V_i feeds A_i, Δq (b̂_i) and the stage positions Q_k, k ≥ i (â_ki)
            Vb[i] = _add(va, _axpy(None, h, [(self.bhat[i], dq_bar)] +
                                   [(self.ahat[k][i], Qb[k]) for k in range(i, s)]))
        v0 = v_bar
        for i in range(s):
            v0 = _add(v0, Vb[i])
        q0 = None
        for i in range(s):
            q0 = _add(q0, Qb[i])
        return q0, v0, pb

    def dh(self, accel, accel_jvp, t, q, v, h, args=()):
        """Trace-time d/dh of :meth:`step` at fixed (q, v): (dΔq/dh, dv'/dh), lists of d
        scalars. ``accel_jvp(t, Q_i, V_i, dt, dQ, dV, *args)`` returns the tangent of a at
        stage i along (dt, dQ, dV) (dQ, dV may be None: zero; dt is the number c_i)."""
        Q, V, A = self.stages(accel, t, q, v, h, args)
        d, s = len(v), self.s
        dV, dQ, dA = [], [], []
        for i in range(s):
            # d/dh (h·Σ a_ij A_j) = Σ a_ij (A_j + h dA_j)
            dV.append(_axpy(None, None, [(self.a[i][j], _axpy(A[j], h, [(1.0, dA[j])]))
                                         for j in range(i)]))
            dQ.append(None if q is None else _axpy(
                None, None, [(self.ahat[i][j], _axpy(V[j], h, [(1.0, dV[j])]))
                             for j in range(i + 1)]))
            dAi = None
            if self.used[i]:
                dAi = accel_jvp(self._time(t, i, h), Q[i], V[i], self.c[i], dQ[i], dV[i], *args)
                if dAi is not None and not isinstance(dAi, list):
                    dAi = components(dAi, d)
            dA.append(dAi)
        ddq = _axpy(None, None, [(self.bhat[i], _axpy(V[i], h, [(1.0, dV[i])]))
                                 for i in range(s)])
        dv = _axpy(None, None, [(self.b[i], _axpy(A[i], h, [(1.0, dA[i])])) for i in range(s)])
        zero = [0.0] * d
        return ddq or zero, dv or zero


class Solver:
    name = "solver"
    #: the method for second-order systems (:class:`Partitioned`); None: first-order only
    partitioned = None
    order = 1
    adaptive = False
    implicit = False
    #: step-size controller (diffsim.controllers): fixed-step solvers take solve(dt=...)
    controller = ConstantStep()

    def make_step(self, ode):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class ExplicitRK(Solver):
    """An explicit Runge–Kutta method from its Butcher tableau (a, b, c)."""

    a: list = []
    b: list = []
    c: list = []

    @property
    def partitioned(self):
        """The tableau applied to a second-order system (q, v) (:class:`Partitioned`)."""
        return Partitioned.from_rk(self.a, self.b, self.c)

    def make_step(self, ode):
        f, n, a, b, c = ode.rhs, ode.n, self.a, self.b, self.c
        s = len(b)
        combs = [_comb(n, a[i]) for i in range(s)]
        final = _comb(n, b)

        @ti.func
        def step(t, y, p, h):
            ks = [_local(f(t, y, p))]
            for i in ti.static(range(1, s)):
                ks.append(_local(f(t + c[i] * h, combs[i](y, h, ks), p)))
            return final(y, h, ks)
        return step


class Euler(ExplicitRK):
    """Explicit (forward) Euler: y' = y + h f(t, y). Order 1."""
    name, order = "euler", 1
    a, b, c = [[]], [1.0], [0.0]


class Midpoint(ExplicitRK):
    """Explicit midpoint (RK2): y' = y + h f(t + h/2, y + h/2 f(t, y)). Order 2."""
    name, order = "midpoint", 2
    a, b, c = [[], [0.5]], [0.0, 1.0], [0.0, 0.5]


class RK4(ExplicitRK):
    """Classic 4th-order Runge–Kutta (weights 1/6, 1/3, 1/3, 1/6; not the 3/8 rule)."""
    name, order = "rk4", 4
    a = [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]]
    b = [1 / 6, 1 / 3, 1 / 3, 1 / 6]
    c = [0.0, 0.5, 0.5, 1.0]


class SecondOrderSolver(Solver):
    """A solver for second-order systems y = (q, v) only, given by its partitioned tableau
    (:class:`Partitioned`); rhs's velocity half is the acceleration a(t, q, v)."""
    partitioned: Partitioned = None

    def make_step(self, ode):
        f, n, tab = ode.rhs, ode.n, self.partitioned
        _need_second_order(ode, self)
        d = n // 2

        def accel(t, Q, V, p):
            # Quadrants: the state as a list of scalars, not a vector (state_as_list)
            k = _local(f(t, (Q + V) if state_as_list() else ti.Vector(Q + V), p))
            return [_at(k, d + i) for i in range(d)]

        def advance(t, y, p, h):
            q, v = [_at(y, i) for i in range(d)], [_at(y, d + i) for i in range(d)]
            dq, v1 = tab.step(accel, t, q, v, h, (p,))
            return [q[i] + dq[i] for i in range(d)] + v1

        # ti.static: a trace-time call (builds the tableau's expressions), not a warning
        if state_as_list():
            @ti.func
            def step(t, y, p, h):
                return ti.static(advance(t, y, p, h))
        else:
            @ti.func
            def step(t, y, p, h):
                return ti.Vector(ti.static(advance(t, y, p, h)))
        return step


class SemiImplicitEuler(SecondOrderSolver):
    """Symplectic Euler for second-order systems y = (q, v): v' = v + h a(t, q, v),
    q' = q + h v'. Order 1; energy error stays bounded on conservative systems.
    Needs ``ODE(second_order=True)``; a(t, q, v) is the velocity half of rhs."""
    name, order = "semi_implicit_euler", 1
    # stage 2 only carries the kicked velocity into the drift: its acceleration is unused
    partitioned = Partitioned(a=[[], [1.0]], b=[1.0, 0.0], ahat=[[0.0], [0.0, 0.0]],
                              bhat=[0.0, 1.0], c=[0.0, 1.0])


class Leapfrog(SecondOrderSolver):
    """Velocity Verlet / leapfrog (kick–drift–kick) for y = (q, v):
    v½ = v + h/2 a(t, q, v);  q' = q + h v½;  v' = v½ + h/2 a(t + h, q', v½).
    Order 2 and symplectic when a depends on q only; with velocity-dependent forces
    (damping) the second kick uses v½ and the order drops to 1 in the damping term."""
    name, order = "leapfrog", 2
    partitioned = Partitioned(a=[[], [0.5]], b=[0.5, 0.5], ahat=[[0.0], [0.0, 1.0]],
                              bhat=[0.0, 1.0], c=[0.0, 1.0])


def _need_second_order(ode, solver):
    if not ode.second_order:
        raise DiffsimError(f"{type(solver).__name__} integrates second-order systems; build "
                           f"the ODE with second_order=True (state = positions, then "
                           f"velocities) or pick RK4()/Midpoint()")


class Dopri5(ExplicitRK):
    """Dormand–Prince 5(4): the 5th-order solution is propagated, the embedded 4th-order
    one gives the error estimate its step-size controller uses.

    ``Dopri5(controller=PIController(rtol, atol, ...))`` (the default controller: rtol
    1e-6, atol 1e-9) picks its own steps: the error norm is the RMS over components of
    err/(atol + rtol·max(|y|, |y'|)), a step is accepted when every batch member's norm
    is ≤ 1 (the batch shares one step grid), steps land exactly on save times and t1;
    see :class:`~diffsim.controllers.PIController` for the step rule, h0 and max_steps.
    ``Dopri5(rtol=..., atol=..., h0=..., max_steps=...)`` is short for that controller
    with those settings. ``Dopri5(controller=ConstantStep())`` takes fixed steps of
    ``solve(dt=...)``.
    Gradients: "discrete" and "forward" differentiate the accepted steps with the step
    sizes held fixed (as "fd" does); "adjoint" integrates the adjoint backwards with
    Dopri5 under the same rtol/atol, starting from the accepted steps and splitting those
    whose error estimate fails.
    """
    name, order = "dopri5", 5
    c = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
    a = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
         [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
         [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
         [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
    b = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
    #: b - b* (5th minus embedded 4th order weights): the local error estimate
    e = [71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]

    def __init__(self, rtol=None, atol=None, h0=None, max_steps=None, *, controller=None):
        short = {k: v for k, v in dict(rtol=rtol, atol=atol, h0=h0, max_steps=max_steps).items()
                 if v is not None}
        if controller is None:
            controller = PIController(**short)
        elif short:
            raise DiffsimError(f"Dopri5: give {', '.join(short)} to the controller "
                               f"({controller!r}) or to Dopri5, not both")
        elif not isinstance(controller, StepController):
            raise DiffsimError(f"Dopri5: controller must be a step-size controller such as "
                               f"PIController(rtol=1e-6) or ConstantStep(), got {controller!r}")
        self.controller = controller

    @property
    def adaptive(self):
        return self.controller.adaptive

    # the PI controller's settings, read through the solver (the Dopri5(rtol=...) shorthand)
    rtol = property(lambda self: self.controller.rtol)
    atol = property(lambda self: self.controller.atol)
    h0 = property(lambda self: self.controller.h0)
    max_steps = property(lambda self: self.controller.max_steps)

    def __repr__(self):
        c = self.controller
        if isinstance(c, PIController) and c == PIController(rtol=c.rtol, atol=c.atol,
                                                             h0=c.h0, max_steps=c.max_steps):
            h0 = "" if c.h0 is None else f", h0={c.h0}"
            return f"Dopri5(rtol={c.rtol}, atol={c.atol}{h0}, max_steps={c.max_steps})"
        return f"Dopri5(controller={c!r})"


class BackwardEuler(Solver):
    """Implicit (backward) Euler for stiff systems: y' = y + h f(t + h, y').

    Each step is solved by Newton's method in numpy with the Jacobian ∂f/∂y from Taichi
    reverse-mode AD of rhs; gradients use the implicit function theorem per step
    (one linear solve with (I - h J)ᵀ), not differentiation of the Newton iterations.
    Order 1, L-stable. tol: Newton stopping tolerance (max-norm of the update).
    """
    name, order, implicit = "backward_euler", 1, True

    def __init__(self, tol=1e-12, max_newton=50):
        self.tol, self.max_newton = float(tol), int(max_newton)


SOLVERS = {cls.name: cls for cls in (Euler, SemiImplicitEuler, Leapfrog, Midpoint, RK4,
                                     Dopri5, BackwardEuler)}


def make_solver(name, **kw) -> Solver:
    """A solver by name ("euler", "semi_implicit_euler", "leapfrog", "midpoint", "rk4",
    "dopri5", "backward_euler")."""
    if name not in SOLVERS:
        raise DiffsimError(f"solver={name!r} is not known; use one of {', '.join(SOLVERS)}")
    return SOLVERS[name](**kw)
