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
        return _local(ti.Vector([_at(y, i) + h * sum([cs[j] * _at(ks[j], i) for j in idx])
                                 for i in range(n)]))
    return comb


def _local(v):
    """Store a Taichi expression in a new local variable (what `x = expr` does in a kernel)."""
    return _impl.expr_init(v)


def _at(v, i):
    """v[i] for a Taichi vector expression, usable from trace-time Python helpers."""
    return _impl.subscript(None, v, i)


class Solver:
    name = "solver"
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


class SemiImplicitEuler(Solver):
    """Symplectic Euler for second-order systems y = (q, v): v' = v + h a(t, q, v),
    q' = q + h v'. Order 1; energy error stays bounded on conservative systems.
    Needs ``ODE(second_order=True)``; a(t, q, v) is the velocity half of rhs."""
    name, order = "semi_implicit_euler", 1

    def make_step(self, ode):
        f, n = ode.rhs, ode.n
        _need_second_order(ode, self)
        d = n // 2

        @ti.func
        def step(t, y, p, h):
            k = f(t, y, p)
            v = [y[d + i] + h * k[d + i] for i in ti.static(range(d))]
            return ti.Vector([y[i] + h * v[i] for i in ti.static(range(d))] + v)
        return step


class Leapfrog(Solver):
    """Velocity Verlet / leapfrog (kick–drift–kick) for y = (q, v):
    v½ = v + h/2 a(t, q, v);  q' = q + h v½;  v' = v½ + h/2 a(t + h, q', v½).
    Order 2 and symplectic when a depends on q only; with velocity-dependent forces
    (damping) the second kick uses v½ and the order drops to 1 in the damping term."""
    name, order = "leapfrog", 2

    def make_step(self, ode):
        f, n = ode.rhs, ode.n
        _need_second_order(ode, self)
        d = n // 2

        @ti.func
        def step(t, y, p, h):
            k = f(t, y, p)
            vh = [y[d + i] + 0.5 * h * k[d + i] for i in ti.static(range(d))]
            q = [y[i] + h * vh[i] for i in ti.static(range(d))]
            k2 = f(t + h, ti.Vector(q + vh), p)
            return ti.Vector(q + [vh[i] + 0.5 * h * k2[d + i] for i in ti.static(range(d))])
        return step


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
