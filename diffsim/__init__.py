"""diffsim: differentiable physics simulation with Taichi.

The public API is listed here; modules behind it are implementation.
"""
from .errors import DiffsimError, GradientError, RuntimeStateError, SceneError, SimulationError
from .runtime import init
from .problem import Param, Parameters, Problem
from .gradients import Adjoint, Discrete, FiniteDifferences, Forward
from .gradcheck import gradcheck
from .optim import LBFGS, Adam, GaussNewton, GradientDescent, Newton, NewtonCG, minimize
from .scene import build, load
from .sweep import sweep
from .ode import ODE, solve
from .systems.bodies import Body
from .systems.mass_spring import MassSpring

__all__ = [
    "init", "load", "build", "Problem", "Param", "Parameters", "gradcheck", "minimize",
    "Adam", "GradientDescent", "LBFGS", "Newton", "NewtonCG", "GaussNewton",
    "MassSpring", "Body", "ODE", "solve", "Adjoint", "Discrete", "Forward", "FiniteDifferences",
    "DiffsimError", "SceneError", "SimulationError", "GradientError", "RuntimeStateError",
    "sweep",
]
__version__ = "0.1.0"
