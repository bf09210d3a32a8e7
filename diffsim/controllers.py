"""Step-size controllers: how a solver picks its time steps, as small strategy objects.

    from diffsim.ode import Dopri5, PIController, ConstantStep, solve
    solve(ode, span, y0, p, solver=Dopri5(controller=PIController(rtol=1e-8, atol=1e-10)))
    solve(ode, span, y0, p, solver=Dopri5(controller=ConstantStep()), dt=0.01)  # fixed steps

* :class:`ConstantStep`: the steps of ``solve(dt=...)``; the default of every fixed-step
  solver, and Dopri5 as a plain 5th-order Runge–Kutta method.
* :class:`PIController`: error control for solvers with an embedded error estimate
  (Dopri5, its default): a step is accepted when the RMS over components (largest over
  the batch) of ``err / (atol + rtol·max(|y|, |y_new|))`` is ≤ 1, and the next step is
  ``h·clamp(safety·err_n^(-β1)·err_{n-1}^(β2), factor_min, factor_max)`` with
  β1 = (pcoeff + icoeff)/k, β2 = pcoeff/k, k the solver's order (diffrax's
  PIDController without the derivative term; Hairer's DOPRI5 PI control is pcoeff = 0.2,
  icoeff = 0.65 with k = 5). The default pcoeff = 0, icoeff = 1 is the classic
  integral controller ``0.9·err^(-1/5)``.

:data:`CONTROLLERS` is the one registry (name -> class): :func:`make_controller` builds
one by name, and :func:`scene_schema` derives the ``[controller]`` scene keys of
``diffsim/tasks/ode.py`` from each class's :attr:`~StepController.options`.
"""
from __future__ import annotations

import dataclasses
import math

from .errors import DiffsimError


@dataclasses.dataclass(frozen=True)
class Option:
    """One controller setting: type ("float" or "int"), default (None: see doc), bounds
    (lo/hi with lo_open/hi_open for strict ones), units and meaning in ``doc``."""

    name: str
    type: str
    default: object
    doc: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    optional: bool = False          # None allowed (meaning given in doc)

    def check(self, owner: str, v):
        """The value converted to the option's type, or a DiffsimError naming it."""
        if v is None and self.optional:
            return None
        want = "an integer" if self.type == "int" else "a number"
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if self.type == "int":
            ok = ok and float(v).is_integer()
        if not ok or not math.isfinite(v):
            raise DiffsimError(f"{owner}: {self.name} must be {want} ({self.doc}), got {v!r}")
        v = int(v) if self.type == "int" else float(v)
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            raise DiffsimError(f"{owner}: {self.name} must be {'>' if self.lo_open else '>='} "
                               f"{self.lo:g} ({self.doc}), got {v!r}")
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            raise DiffsimError(f"{owner}: {self.name} must be {'<' if self.hi_open else '<='} "
                               f"{self.hi:g} ({self.doc}), got {v!r}")
        return v


class StepController:
    """Base class. ``name``: the registry name; ``adaptive``: whether the solver picks
    its own steps (needs an embedded error estimate) or takes ``solve(dt=...)``;
    ``options``: the settings, each an attribute of the same name."""

    name = "controller"
    adaptive = False
    options: tuple[Option, ...] = ()

    def __init__(self, **kw):
        unknown = sorted(set(kw) - {o.name for o in self.options})
        if unknown:
            known = ", ".join(o.name for o in self.options) or "none"
            raise DiffsimError(f"{type(self).__name__} has no setting {unknown[0]!r}; its "
                               f"settings: {known}")
        for o in self.options:
            setattr(self, o.name, o.check(type(self).__name__, kw.get(o.name, o.default)))
        self._check()

    def _check(self):
        """Checks across settings (after each one passed its own)."""

    def settings(self) -> dict:
        return {o.name: getattr(self, o.name) for o in self.options}

    def replace(self, **kw) -> "StepController":
        """A copy with some settings changed (checked again)."""
        return type(self)(**{**self.settings(), **kw})

    def __eq__(self, other):
        return type(self) is type(other) and self.settings() == other.settings()

    def __hash__(self):
        return hash((type(self), tuple(self.settings().items())))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


class ConstantStep(StepController):
    """Fixed steps of size ``solve(dt=...)`` (rounded so that they divide [t0, t1]); no
    error control. The default of every fixed-step solver; ``Dopri5(controller=
    ConstantStep())`` runs Dopri5 as a fixed-step 5th-order method."""

    name = "constant"


class PIController(StepController):
    """Error-controlled steps for solvers with an embedded error estimate (Dopri5).

    rtol, atol: per-component tolerance atol + rtol·max(|y|, |y_new|) (atol in the
    state's units); the error norm is the RMS over components, largest over the batch;
    a step is accepted when it is ≤ 1. Next step: h·clamp(safety·err^(-β1)·err_prev^(β2),
    factor_min, factor_max), β1 = (pcoeff + icoeff)/k, β2 = pcoeff/k (k = the solver's
    order; err_prev: the last accepted step's error, at least 1e-4); a zero error grows
    the step by factor_max, a NaN/inf one shrinks it by factor_min; the step right after
    a rejection may not grow. h0: first step in time units (None: Hairer's heuristic);
    max_steps: attempts (accepted + rejected) after which the solve fails with a
    SimulationError.
    """

    name = "pi"
    adaptive = True
    options = (
        Option("rtol", "float", 1e-6, "relative tolerance", lo=0.0, lo_open=True),
        Option("atol", "float", 1e-9, "absolute tolerance, state units", lo=0.0, lo_open=True),
        Option("safety", "float", 0.9, "factor on the proposed step", lo=0.0, hi=1.0,
               lo_open=True),
        Option("factor_min", "float", 0.2, "smallest step change factor", lo=0.0, hi=1.0,
               lo_open=True, hi_open=True),
        Option("factor_max", "float", 10.0, "largest step change factor", lo=1.0,
               lo_open=True),
        Option("pcoeff", "float", 0.0, "proportional coefficient", lo=0.0),
        Option("icoeff", "float", 1.0, "integral coefficient", lo=0.0, lo_open=True),
        Option("h0", "float", None, "first step in time units; None: Hairer's heuristic",
               lo=0.0, lo_open=True, optional=True),
        Option("max_steps", "int", 100_000, "most attempted steps", lo=1, hi=2**31 - 1),
    )

    def exponents(self, order: int) -> tuple[float, float]:
        """(β1, β2) for a solver of this order: factor = safety·err^(-β1)·err_prev^(β2)."""
        k = float(order)
        return (self.pcoeff + self.icoeff) / k, self.pcoeff / k


#: the one registry of step-size controllers: name -> class
CONTROLLERS = {cls.name: cls for cls in (ConstantStep, PIController)}


def make_controller(name: str, **kw) -> StepController:
    """A controller by registry name ("constant", "pi") with its settings."""
    if name not in CONTROLLERS:
        raise DiffsimError(f"controller {name!r} is not known; use one of {', '.join(CONTROLLERS)}")
    return CONTROLLERS[name](**kw)


def all_options() -> dict[str, tuple[Option, list[str]]]:
    """Every setting of the registry's controllers: name -> (Option, controller names)."""
    out = {}
    for cname, cls in CONTROLLERS.items():
        for o in cls.options:
            out.setdefault(o.name, (o, []))[1].append(cname)
    return out


def scene_schema(default_name="auto", **defaults) -> dict:
    """The ``[controller]`` section of a scene schema, from the registry: ``name`` (one of
    "auto" — the solver's own default — and the registry's names) and every setting,
    each absent by default (None: the controller's default, or ``defaults[name]``, which
    the kind's builder passes to :func:`build_from_scene`)."""
    from .scene import Key
    sec = {"name": Key("str", default_name, "step-size controller: auto (the solver's "
                       "default: pi for dopri5, constant otherwise), "
                       + ", ".join(CONTROLLERS), choices=("auto", *CONTROLLERS))}
    for name, (o, owners) in all_options().items():
        d = defaults.get(name, o.default)
        doc = f"{o.doc} ({', '.join(owners)}; default {d!r})"
        sec[name] = Key(o.type, None, doc, lo=o.lo, hi=o.hi, lo_open=o.lo_open,
                        hi_open=o.hi_open)
    return sec


def build_from_scene(sec: dict, solver_default: StepController, error, section="controller",
                     **defaults) -> StepController:
    """The controller of a scene's ``[controller]`` section ``sec`` (validated by
    :func:`scene_schema`); ``solver_default`` is the solver's own (name "auto");
    ``defaults`` are the kind's defaults for unset settings; ``error(message, key,
    value)`` makes the SceneError raised for a setting the controller does not have or a
    combination it refuses."""
    name = sec["name"]
    cls = type(solver_default) if name == "auto" else CONTROLLERS[name]
    given = {k: v for k, v in sec.items() if k != "name" and v is not None}
    own = {o.name for o in cls.options}
    for k, v in given.items():
        if k not in own:
            owners = all_options()[k][1]
            raise error(f"is not a setting of the {cls.name!r} controller (its settings: "
                        f"{', '.join(sorted(own)) or 'none'}); {k} belongs to "
                        f"{section}.name = {' or '.join(map(repr, owners))}",
                        f"{section}.{k}", v)
    kw = {k: v for k, v in defaults.items() if k in own}
    kw.update(given)
    try:
        return cls(**kw)
    except DiffsimError as e:
        bad = next((k for k in given if f": {k} must" in str(e)), None)
        raise error(str(e), f"{section}.{bad}" if bad else f"{section}.name",
                    given.get(bad, name)) from None
