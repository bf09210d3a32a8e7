"""ODE systems, integrators, gradient methods, fitting and sensitivity analysis.

Public API: :class:`ODE`, :func:`solve` / :class:`Solution`, the solvers (Euler,
SemiImplicitEuler, Leapfrog, Midpoint, RK4, Dopri5, BackwardEuler), the step-size
controllers (ConstantStep, PIController; :mod:`diffsim.controllers`) and
:class:`Adjoint`. See docs/ode.md.
"""
from .system import ODE
from .solvers import (BackwardEuler, Dopri5, Euler, Leapfrog, Midpoint, RK4,
                      SemiImplicitEuler, Solver, make_solver)
from ..controllers import CONTROLLERS, ConstantStep, PIController, StepController, make_controller
from .gradients import Adjoint
from .solve import Solution, solve

__all__ = ["ODE", "solve", "Solution", "Solver", "Euler", "SemiImplicitEuler", "Leapfrog",
           "Midpoint", "RK4", "Dopri5", "BackwardEuler", "Adjoint", "make_solver",
           "StepController", "ConstantStep", "PIController", "CONTROLLERS", "make_controller"]
