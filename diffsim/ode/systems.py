"""Bundled ODE systems (right-hand sides written componentwise, see system.py).

Each entry: ODE object plus state/parameter names. Units are dimensionless unless said.
"""
from ..backend import ti

from .system import ODE


@ti.func
def _oscillator(t, y, p):      # y = (x, v); p = (omega [rad/s], zeta [-])
    return ti.Vector([y[1], -p[0] * p[0] * y[0] - 2.0 * p[1] * p[0] * y[1]])


@ti.func
def _pendulum(t, y, p):        # y = (theta [rad], omega [rad/s]); p = (length [m], damping [1/s], g [m/s²])
    return ti.Vector([y[1], -p[2] / p[0] * ti.sin(y[0]) - p[1] * y[1]])


@ti.func
def _lotka_volterra(t, y, p):  # y = (prey u, predator v); p = (alpha, beta, gamma, delta)
    return ti.Vector([p[0] * y[0] - p[1] * y[0] * y[1], p[3] * y[0] * y[1] - p[2] * y[1]])


@ti.func
def _lorenz(t, y, p):          # p = (sigma, rho, beta)
    return ti.Vector([p[0] * (y[1] - y[0]), y[0] * (p[1] - y[2]) - y[1],
                      y[0] * y[1] - p[2] * y[2]])


@ti.func
def _kepler(t, y, p):          # y = (x, y, vx, vy); p = (GM,)
    r2 = y[0] * y[0] + y[1] * y[1]
    inv3 = 1.0 / (r2 * ti.sqrt(r2))
    return ti.Vector([y[2], y[3], -p[0] * y[0] * inv3, -p[0] * y[1] * inv3])


SYSTEMS = {
    "oscillator": ODE(_oscillator, 2, 2, second_order=True, name="oscillator",
                      state_names=["x", "v"], param_names=["omega", "zeta"]),
    "pendulum": ODE(_pendulum, 2, 3, second_order=True, name="pendulum",
                    state_names=["theta", "omega"], param_names=["length", "damping", "g"]),
    "lotka_volterra": ODE(_lotka_volterra, 2, 4, name="lotka_volterra",
                          state_names=["prey", "predator"],
                          param_names=["alpha", "beta", "gamma", "delta"]),
    "lorenz": ODE(_lorenz, 3, 3, name="lorenz", state_names=["x", "y", "z"],
                  param_names=["sigma", "rho", "beta"]),
    "kepler": ODE(_kepler, 4, 1, second_order=True, name="kepler",
                  state_names=["x", "y", "vx", "vy"], param_names=["GM"]),
}
