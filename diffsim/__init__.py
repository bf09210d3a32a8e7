"""diffsim: differentiable physics simulation with Taichi.

The public API is listed here; modules behind it are implementation.
"""
from .errors import DiffsimError, GradientError, RuntimeStateError, SceneError, SimulationError
from .runtime import init
from .problem import Param, Parameters, Problem
from .gradcheck import gradcheck
from .optim import LBFGS, Adam, GradientDescent, minimize
from .scene import build, load
from .sweep import sweep
from .ode import ODE, Adjoint, solve
from .systems.bodies import Body
from .systems.mass_spring import MassSpring

__all__ = [
    "init", "load", "build", "Problem", "Param", "Parameters", "gradcheck", "minimize",
    "Adam", "GradientDescent", "LBFGS", "MassSpring", "Body", "ODE", "solve", "Adjoint",
    "DiffsimError", "SceneError", "SimulationError", "GradientError", "RuntimeStateError",
    "sweep",
]
__version__ = "0.1.0"
