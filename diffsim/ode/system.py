"""User ODE systems: dy/dt = f(t, y, p), an initial state, names.

An :class:`ODE` holds Taichi functions only (no fields), so it can be defined at import
time and used with any runtime. Write the right-hand side componentwise:

    @ti.func
    def lotka_volterra(t, y, p):      # y: ti.Vector(2), p: ti.Vector(4)
        return ti.Vector([p[0] * y[0] - p[1] * y[0] * y[1],
                          p[3] * y[0] * y[1] - p[2] * y[1]])

Build the returned vector with ``ti.Vector([...])`` of scalar expressions and index
``y[i]``/``p[j]``; do not use whole-vector arithmetic (``y + h * k``, ``r.norm()``)
inside ``f``: with Taichi 1.7.4, vector arithmetic inside a fused time loop gives wrong
reverse-mode gradients (measured; see docs/ode.md). diffsim's integrators build every
stage componentwise for the same reason.
"""
from ..errors import DiffsimError

#: most state components / parameters one ODE may have (each state component is a
#: scalar carried through the fused time loop; the kernel is written for up to MAX_STATE)
MAX_STATE = 8
MAX_PARAMS = 16


class ODE:
    """dy/dt = rhs(t, y, p) with y ∈ R^n_state, p ∈ R^n_params.

    rhs: ``@ti.func def rhs(t, y, p) -> ti.Vector(n_state)`` (t: scalar time, y: state
    vector, p: parameter vector; units are the user's). y0: optional
    ``@ti.func def y0(p) -> ti.Vector(n_state)``: the initial state as a function of the
    parameters (then gradients w.r.t. p include its effect); without it the initial
    state is an input of :func:`diffsim.ode.solve` and gets its own gradient.
    running: optional ``@ti.func def g(t, y, p) -> scalar`` for a running cost ∫ g dt;
    final: optional ``@ti.func def phi(y, p) -> scalar`` added at the final time.
    second_order: the state is (q, v) with n_state/2 positions then velocities and
    dq/dt = v (needed by SemiImplicitEuler and Leapfrog, which use only the velocity
    half of rhs). state_names / param_names: labels for reports and plots.
    """

    def __init__(self, rhs, n_state, n_params, *, y0=None, running=None, final=None,
                 second_order=False, state_names=None, param_names=None, name="ode"):
        if not (isinstance(n_state, int) and 1 <= n_state <= MAX_STATE):
            raise DiffsimError(f"n_state must be an integer in 1..{MAX_STATE}, got {n_state!r}")
        if not (isinstance(n_params, int) and 1 <= n_params <= MAX_PARAMS):
            raise DiffsimError(f"n_params must be an integer in 1..{MAX_PARAMS}, got {n_params!r}; "
                               "an ODE without parameters can take a dummy one")
        if second_order and n_state % 2:
            raise DiffsimError(f"second_order=True needs an even n_state (positions then "
                               f"velocities), got n_state={n_state}")
        self.rhs, self.n, self.m = rhs, n_state, n_params
        self.y0, self.running, self.final = y0, running, final
        self.second_order = bool(second_order)
        self.state_names = list(state_names or [f"y{i}" for i in range(n_state)])
        self.param_names = list(param_names or [f"p{j}" for j in range(n_params)])
        if len(self.state_names) != n_state or len(self.param_names) != n_params:
            raise DiffsimError(f"state_names needs {n_state} names and param_names {n_params}; "
                               f"got {self.state_names} and {self.param_names}")
        self.name = name
        self._cache = {}

    def __repr__(self):
        return f"ODE({self.name!r}, n_state={self.n}, n_params={self.m})"

    def check(self):
        """Trace the user functions once per Taichi runtime in a tiny probe kernel and
        refuse, with a DiffsimError naming the function and the sizes, a right-hand side
        (or y0(p)) that returns other than n_state components, a running/final cost that
        is not a scalar, or a constant index past the state (y) or parameter (p) vector.
        Taichi 1.7.4 checks none of these: a short vector or an index past the end reads
        or writes outside the stored state and crashes the process (segfault), a long one
        is silently cut. Runs before any real kernel; cost: one small compile (~0.5 s).
        Indices computed at run time (dynamic loops) cannot be checked here."""
        from .. import runtime
        gen = runtime.current().generation
        if self._cache.get("checked") == gen:
            return
        from .. import backend
        for what, fn, want in (("rhs", self.rhs, (self.n,)), ("y0", self.y0, (self.n,)),
                               ("running", self.running, ()), ("final", self.final, ())):
            if fn is not None and backend.is_foreign_function(fn):
                other = "quadrants" if backend.name() == "taichi" else "taichi"
                raise DiffsimError(
                    f"{what} function {_fname(fn)} of ODE {self.name!r} is a {other} function "
                    f"but diffsim runs on {backend.name()} here: decorate it with the ti of "
                    f"`from diffsim.backend import ti` (it follows the chosen backend), or run "
                    f"with --backend {other} (DIFFSIM_BACKEND={other})")
            if fn is not None:
                _probe(self, what, fn, want)
                from .solvers import state_as_list
                if what in ("rhs", "running") and state_as_list():
                    _probe(self, what, fn, want, as_list=True)
        self._cache["checked"] = gen


def _fname(fn):
    f = getattr(fn, "__wrapped__", fn)
    return getattr(f, "__qualname__", getattr(f, "__name__", repr(fn)))


def _probe(ode, what, fn, want, as_list=False):
    from ..backend import expr_class, lang_impl, ti
    impl, Expr = lang_impl(), expr_class()
    from .solvers import quiet_trace

    n, m = ode.n, ode.m
    bad, shapes = [], []
    orig = impl.subscript

    def subscript(ast_builder, value, *indices, **kw):
        # record constant indices past the end of a local vector (y, p, or built from them)
        if isinstance(value, Expr) and value.is_tensor():
            shape = value.get_shape()
            idx = list(indices)
            if len(idx) == 1 and isinstance(idx[0], (tuple, list)):
                idx = list(idx[0])
            for d, i in enumerate(idx[:len(shape)]):
                if isinstance(i, int) and not -shape[d] <= i < shape[d]:
                    bad.append((i, shape[d]))
        return orig(ast_builder, value, *indices, **kw)

    def record(v):
        shapes.append(v.get_shape() if isinstance(v, Expr) and v.is_tensor() else
                      (() if isinstance(v, (Expr, int, float)) else type(v).__name__))

    @ti.kernel
    def probe():
        y = ti.Vector([0.5 + 0.1 * c for c in ti.static(range(n))])
        if ti.static(as_list):
            y = ti.static([0.5 + 0.1 * c for c in range(n)])
        p = ti.Vector([1.0 + 0.1 * j for j in ti.static(range(m))])
        if ti.static(what == "rhs" or what == "running"):
            record(fn(0.0, y, p))
        elif ti.static(what == "final"):
            record(fn(y, p))
        else:
            record(fn(p))

    sig = {"rhs": "(t, y, p)", "running": "(t, y, p)", "final": "(y, p)", "y0": "(p)"}[what]
    name = f"{what} function {_fname(fn)}{sig} of ODE {ode.name!r}"
    impl.subscript = subscript
    err = None
    try:
        with quiet_trace():
            probe()
    except Exception as e:        # a Taichi compile error in the user's function
        err = e
    finally:
        impl.subscript = orig
    if bad:
        i, size = bad[0]
        raise DiffsimError(
            f"{name} uses index {i} of a vector with {size} components; y has n_state = {n} "
            f"components (y[0]..y[{n - 1}]) and p has n_params = {m} (p[0]..p[{m - 1}]): "
            "fix the index or the sizes given to ODE(...)")
    if err is not None and as_list:
        raise DiffsimError(
            f"{name} does not compile with y as a list of scalars, which is how the quadrants "
            "backend passes the state to it (Quadrants 1.3.3 differentiates a vector built "
            "from the loop-carried state wrongly; docs/taichi-notes.md 33): index y "
            "componentwise (y[0], y[1], ...) instead of using vector operations on it, or "
            f"run with --backend taichi. ({type(err).__name__}: {str(err).strip()[:200]})") from None
    if err is not None:
        raise DiffsimError(f"{name} does not compile as a Taichi function: "
                           f"{type(err).__name__}: {str(err).strip()[:400]}") from None
    got = shapes[0] if shapes else None
    if got != want:
        if want == ():
            raise DiffsimError(f"{name} must return a scalar, got a value of shape {got}")
        gotn = (f"{got[0]} components" if isinstance(got, tuple) and len(got) == 1 else
                "a scalar" if got == () else f"a value of shape {got}")
        raise DiffsimError(
            f"{name} returns {gotn} but n_state = {n}: return "
            f"ti.Vector([...]) with exactly {n} entries, one per state component, or change "
            "n_state")
