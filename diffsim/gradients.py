"""Gradient methods as small objects, with one registry.

A method is chosen by passing an object (or its name) to one function,
``Problem.value_and_grad(x, method)`` (diffrax's style: ``adjoint=...``)::

    pb.value_and_grad(x, Discrete())                 # reverse mode through the steps
    pb.value_and_grad(x, Forward())                  # tangent-linear, one pass per parameter
    pb.value_and_grad(x, Adjoint(kind="backsolve"))  # continuous adjoint ODE, backwards
    pb.value_and_grad(x, FiniteDifferences(step=1e-5))
    pb.value_and_grad(x, "forward")                  # a name: that class with its defaults

What each computes:

- ``Discrete``: the exact gradient of the discretised objective (reverse-mode AD of the
  solver's steps, events included).
- ``Forward``: the same gradient by forward (tangent-linear) propagation through the same
  step code; equal to ``Discrete`` up to round-off. Cost grows with the number of
  parameters (one pass per parameter or parameter group), memory does not grow with it.
- ``Adjoint``: the continuous adjoint: the adjoint ODE integrated backwards in time, with
  jumps at events. It is the gradient of the *exact* ODE solution's objective up to the
  solver's discretisation error, so it differs from ``Discrete`` by that error
  (``Problem.gradient_error`` estimates it). kind "checkpointed" (recompute the forward
  states per segment) or "backsolve" (integrate the state backwards alongside λ).
- ``FiniteDifferences``: central differences, entry i with step
  step·max(|x_i|, scale_i); step None: the problem's ``fd_step``.

A method object compares equal to its name (``Adjoint("backsolve") == "adjoint"``), so
code written for names keeps working; ``str(method)`` is the name. Adding a method is
one class here plus, in each problem that supports it, a branch on its name.
"""
import dataclasses
import math
from typing import ClassVar

from .errors import DiffsimError


class GradientMethod:
    """Base of the gradient-method objects; ``name`` is the registry key."""

    name: ClassVar[str] = ""

    def __str__(self):
        return self.name

    def __eq__(self, other):
        if isinstance(other, str):
            return other == self.name
        if type(other) is not type(self):
            return NotImplemented
        return dataclasses.astuple(self) == dataclasses.astuple(other)

    def __hash__(self):
        # equal to its name, so it must hash like it (unequal objects may share a hash)
        return hash(self.name)


@dataclasses.dataclass(frozen=True, eq=False)
class Discrete(GradientMethod):
    """Reverse-mode AD through the solver's steps: the exact gradient of the discretised
    objective."""

    name: ClassVar[str] = "discrete"


@dataclasses.dataclass(frozen=True, eq=False)
class Forward(GradientMethod):
    """Forward-mode (tangent-linear) propagation through the same steps: equals
    ``Discrete`` to round-off; one pass per parameter (or per parameter group)."""

    name: ClassVar[str] = "forward"


@dataclasses.dataclass(frozen=True, eq=False)
class Adjoint(GradientMethod):
    """Continuous adjoint; kind "checkpointed" (recompute forward states per segment,
    accurate, memory O(K + N/K)) or "backsolve" (integrate the state backwards alongside λ,
    memory O(1) in the steps but drifts on unstable or dissipative systems); None (the
    default, and what the name "adjoint" gives): the problem's own choice (an ODE scene's
    ``adjoint`` key), else "checkpointed".

    For ODE scenes the checkpoint spacing is ``solve(max_fused=...)``: K = ceil(N /
    max_fused) segments."""

    kind: str | None = None
    name: ClassVar[str] = "adjoint"

    def __post_init__(self):
        if self.kind not in (None, "checkpointed", "backsolve"):
            raise DiffsimError(f"Adjoint(kind={self.kind!r}) is not known; use 'checkpointed' "
                               "(recompute forward per segment) or 'backsolve' (integrate the "
                               "state backwards)")


@dataclasses.dataclass(frozen=True, eq=False)
class FiniteDifferences(GradientMethod):
    """Central finite differences; ``step``: relative step (times max(|x_i|, scale_i)),
    None for the problem's ``fd_step``."""

    step: float | None = None
    name: ClassVar[str] = "fd"

    def __post_init__(self):
        if self.step is not None and not (isinstance(self.step, (int, float))
                                          and not isinstance(self.step, bool)
                                          and math.isfinite(self.step) and 0 < self.step < 1):
            raise DiffsimError(f"FiniteDifferences(step={self.step!r}): the relative step must be "
                               "a number in (0, 1), e.g. 1e-6")


#: name -> class; the CLI's ``--method`` choices and every name lookup come from here
REGISTRY = {c.name: c for c in (Discrete, Adjoint, Forward, FiniteDifferences)}
#: the method names, in the order the CLI lists them
METHOD_NAMES = tuple(REGISTRY)


def resolve(method) -> GradientMethod:
    """A GradientMethod from a name (the class with its defaults) or an object (as is);
    DiffsimError (exit 2) for anything else."""
    if isinstance(method, GradientMethod):
        return method
    if isinstance(method, str) and method in REGISTRY:
        return REGISTRY[method]()
    raise DiffsimError(f"method={method!r} is not a gradient method; use one of "
                       f"{', '.join(METHOD_NAMES)} or an object such as Adjoint(kind='backsolve')")
