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
