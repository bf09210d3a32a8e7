"""Problems: named parameters, an objective and its gradient by a chosen method.

The maths only: every scene builds a :class:`Problem` (mixed with a
:class:`diffsim.task.Task`, which holds what the command line reports and plots); every
verb (grad, check, optimize, fit, sensitivity) works on one. Subclasses implement
``_objective(x)`` and ``_value_and_grad(x, method)`` for the methods they support
(``method``: an object of :mod:`diffsim.gradients`); ``fd`` (central finite differences)
is provided here for all.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from .errors import DiffsimError, GradientError
from .gradients import METHOD_NAMES, GradientMethod, resolve


@dataclasses.dataclass
class Param:
    """One scalar parameter: name, value, bounds and whether optimisers may change it."""

    name: str
    value: float
    lower: float = -math.inf
    upper: float = math.inf
    optimize: bool = False
    unit: str = ""
    #: typical magnitude: finite differences step by fd_step·max(|value|, scale)
    scale: float = 1.0


class Parameters:
    """An ordered set of named scalars viewed as a flat float64 vector."""

    def __init__(self, params: Sequence[Param]):
        self.items = list(params)
        names = [p.name for p in self.items]
        if len(set(names)) != len(names):
            raise DiffsimError(f"duplicate parameter names in {names}")
        self.index = {p.name: i for i, p in enumerate(self.items)}

    def __len__(self):
        return len(self.items)

    def __getitem__(self, name):
        return self.items[self.index[name]]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.items]

    @property
    def vector(self) -> np.ndarray:
        return np.array([p.value for p in self.items], dtype=np.float64)

    @property
    def lower(self) -> np.ndarray:
        return np.array([p.lower for p in self.items], dtype=np.float64)

    @property
    def upper(self) -> np.ndarray:
        return np.array([p.upper for p in self.items], dtype=np.float64)

    @property
    def free(self) -> np.ndarray:
        """Boolean mask of the parameters optimisers may change."""
        return np.array([p.optimize for p in self.items], dtype=bool)

    def set_vector(self, x) -> None:
        for p, v in zip(self.items, np.asarray(x, dtype=np.float64)):
            p.value = float(v)

    def as_dict(self, x=None, only_free=False) -> dict[str, float]:
        x = self.vector if x is None else np.asarray(x)
        return {p.name: float(v) for p, v in zip(self.items, x) if p.optimize or not only_free}


#: names of the gradient methods (diffsim.gradients.REGISTRY), kept for older imports
GRADIENT_METHODS = METHOD_NAMES


class Problem:
    """Base class: parameters, an objective (a float64 scalar) and its gradient.

    ``value_and_grad(x, method)`` returns (objective, gradient over all parameters).
    Subclasses set ``self.params`` and implement ``_objective`` and
    ``_value_and_grad(x, method)`` (``method`` a :class:`diffsim.gradients.GradientMethod`,
    equal to its name); ``methods`` lists the names of the methods they support.
    """

    name = "problem"
    methods: tuple[str, ...] = ("discrete", "fd")
    default_method = "discrete"
    #: relative finite-difference step (scaled by max(|x|, 1)) for method "fd"
    fd_step = 1e-6

    params: Parameters

    # -- optional hooks: None where a problem has none; subclasses define methods -----
    #: converged(x, f) -> bool: the problem's own stopping test (minimize ends with
    #: status "converged" when it returns True)
    converged = None
    #: progress_info(x) -> str: a short text the progress bar shows beside the loss
    progress_info = None
    #: exact_hvp(x, v, method) -> (H·v, gradients used): a Hessian-vector product
    #: exact to round-off; without it diffsim.hessian differences exact gradients
    exact_hvp = None
    #: gauss_newton_hessian(x) -> JᵀJ (n, n) of a least-squares objective ½·|r|²,
    #: J = dr/dx; needed by the Gauss–Newton optimiser
    gauss_newton_hessian = None

    # -- to implement ----------------------------------------------------------------
    def _objective(self, x: np.ndarray) -> float:
        raise NotImplementedError

    def _value_and_grad(self, x: np.ndarray, method: GradientMethod) -> tuple[float, np.ndarray]:
        raise NotImplementedError

    # -- public ----------------------------------------------------------------------
    def x0(self) -> np.ndarray:
        """The current parameter vector (all parameters)."""
        return self.params.vector

    def objective(self, x=None) -> float:
        """The objective at ``x`` (all parameters; default: the current values)."""
        x = self._as_x(x)
        f = float(self._objective(x))
        return f

    def value_and_grad(self, x=None, method: GradientMethod | str | None = None):
        """(objective, d objective / d x) at ``x`` by ``method``.

        method: a :mod:`diffsim.gradients` object (``Discrete()``, ``Forward()``,
        ``Adjoint(kind=...)``, ``FiniteDifferences(step=...)``) or its name ("discrete",
        "forward", "adjoint", "fd"); None: ``self.default_method``. See ``self.methods``.
        """
        x = self._as_x(x)
        method = self.resolve_method(method)
        if method == "fd":
            f = self.objective(x)
            return f, self.fd_gradient(x, step=method.step)
        f, g = self._value_and_grad(x, method)
        g = np.asarray(g, dtype=np.float64)
        if not np.all(np.isfinite(g)):
            bad = [n for n, v in zip(self.params.names, g) if not math.isfinite(v)]
            raise GradientError(f"the {method} gradient is NaN/inf for {', '.join(bad)} at "
                                f"{self.params.as_dict(x)}")
        return float(f), g

    def resolve_method(self, method) -> GradientMethod:
        """The GradientMethod object for ``method`` (object, name or None for the
        default); DiffsimError when it is unknown or this problem does not offer it."""
        m = resolve(method or self.default_method)
        if m.name not in self.methods:
            raise DiffsimError(f"method={m.name!r} is not available for {self.name}; "
                               f"it supports {', '.join(self.methods)}")
        return m

    def gradient_error(self, x, method) -> np.ndarray | None:
        """Expected |gradient by ``method`` − exact gradient of the discretised objective|
        per parameter (absolute), or None when the method is exact up to round-off.

        Methods that differentiate a different model from the one the objective evaluates
        (the continuous adjoint: the ODE's exact gradient, not the RK4 objective's) override
        this with an estimate of that difference, so ``gradcheck`` can hold each method to
        what it should equal instead of failing a right answer."""
        return None

    def gradient(self, x=None, method=None) -> np.ndarray:
        return self.value_and_grad(x, method)[1]

    def fd_gradient(self, x=None, which=None, step=None) -> np.ndarray:
        """Central finite differences of the objective, entry i with step
        h·max(|x_i|, scale_i) (scale: the parameter's typical magnitude)."""
        x = self._as_x(x)
        h = self.fd_step if step is None else step
        g = np.zeros_like(x)
        idx = range(len(x)) if which is None else which
        for i in idx:
            hi = h * max(abs(x[i]), self.params.items[i].scale)
            xp, xm = x.copy(), x.copy()
            xp[i] += hi
            xm[i] -= hi
            g[i] = (self._objective(xp) - self._objective(xm)) / (2 * hi)
        return g

    def set(self, x) -> None:
        """Make ``x`` the current parameter values."""
        self.params.set_vector(self._as_x(x))

    def _as_x(self, x) -> np.ndarray:
        if x is None:
            return self.params.vector
        if isinstance(x, dict):
            v = self.params.vector
            for k, val in x.items():
                if k not in self.params.index:
                    raise DiffsimError(f"unknown parameter {k!r}; known: {', '.join(self.params.names)}")
                v[self.params.index[k]] = val
            return v
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (len(self.params),):
            raise DiffsimError(f"expected a vector of {len(self.params)} parameters "
                               f"({', '.join(self.params.names)}), got shape {x.shape}")
        return x
