"""A neural aiming controller trained through the simulator ("differentiable programming").

A small MLP maps (target distance, wind) to (elevation, speed) within bounds. Training
samples a batch of targets and winds, simulates all of them in one batched launch,
and backpropagates the batch's mean ½·miss² through the simulation (Taichi reverse mode:
d loss / d launch parameters) and then through the network (numpy chain rule).
Its predictions then start per-target refinement with :meth:`CannonProblem.aim`.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..optim import Adam
from ..systems.projectile import Projectile


@dataclasses.dataclass
class AimNetwork:
    """MLP: inputs (d/d_scale, w/w_scale) -> tanh hidden -> 2 outputs squashed into
    angle ∈ [angle_lo, angle_hi] rad and speed ∈ [speed_lo, speed_hi] m/s."""

    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray
    b2: np.ndarray
    d_scale: float
    w_scale: float
    angle_lo: float = 0.05
    angle_hi: float = math.pi / 4
    speed_lo: float = 5.0
    speed_hi: float = 60.0

    @classmethod
    def create(cls, hidden=32, seed=0, d_scale=100.0, w_scale=5.0, **bounds):
        rng = np.random.default_rng(seed)
        return cls(rng.normal(0, 1 / math.sqrt(2), (2, hidden)), np.zeros(hidden),
                   rng.normal(0, 1 / math.sqrt(hidden), (hidden, 2)), np.zeros(2),
                   d_scale, w_scale, **bounds)

    @property
    def vector(self):
        return np.concatenate([self.W1.ravel(), self.b1, self.W2.ravel(), self.b2])

    def set_vector(self, v):
        h = self.b1.size
        i = 0
        for name, shape in (("W1", (2, h)), ("b1", (h,)), ("W2", (h, 2)), ("b2", (2,))):
            n = int(np.prod(shape))
            setattr(self, name, v[i:i + n].reshape(shape))
            i += n

    def __call__(self, distance, wind, cache=False):
        """(angle [rad], speed [m/s]) for arrays of target distances [m] and winds [m/s]."""
        X = np.stack([np.asarray(distance) / self.d_scale, np.asarray(wind) / self.w_scale], axis=1)
        H = np.tanh(X @ self.W1 + self.b1)
        Z = H @ self.W2 + self.b2
        S = 1 / (1 + np.exp(-Z))
        angle = self.angle_lo + (self.angle_hi - self.angle_lo) * S[:, 0]
        speed = self.speed_lo + (self.speed_hi - self.speed_lo) * S[:, 1]
        return (angle, speed, (X, H, S)) if cache else (angle, speed)

    def backward(self, cache, d_angle, d_speed):
        """Gradient of the loss w.r.t. the flat parameter vector, given d loss/d outputs."""
        X, H, S = cache
        dZ = np.stack([d_angle * (self.angle_hi - self.angle_lo),
                       d_speed * (self.speed_hi - self.speed_lo)], axis=1) * S * (1 - S)
        dW2, db2 = H.T @ dZ, dZ.sum(0)
        dH = dZ @ self.W2.T * (1 - H * H)
        dW1, db1 = X.T @ dH, dH.sum(0)
        return np.concatenate([dW1.ravel(), db1, dW2.ravel(), db2])


def train_aim_network(net=None, *, distances=(30.0, 150.0), winds=(-5.0, 5.0), drag=0.002,
                      gravity=9.81, batch=256, iterations=300, lr=3e-3, dt=0.01, seed=0,
                      callback=None):
    """Train ``net`` (default a fresh AimNetwork) to hit targets at ``distances`` [m] in
    ``winds`` [m/s]; returns (net, losses). Each iteration: one batched simulation of
    ``batch`` cannons with new random targets, loss = mean ½·miss² [m²]."""
    net = net or AimNetwork.create(seed=seed, d_scale=distances[1])
    rng = np.random.default_rng(seed + 1)
    steps = math.ceil(1.2 * 2 * net.speed_hi / gravity / dt)
    sim = Projectile(batch, steps=steps, dt=dt)
    opt = Adam(lr=lr, beta2=0.99)
    theta = net.vector
    losses = []
    for it in range(iterations):
        d = rng.uniform(*distances, batch)
        w = rng.uniform(*winds, batch)
        angle, speed, cache = net(d, w, cache=True)
        sim.set_inputs(angle=angle, speed=speed, drag=drag, gravity=gravity, wind_x=w, target_x=d)
        loss = sim.forward("miss") / batch
        g = sim.backward()
        grad = net.backward(cache, g["angle"] / batch, g["speed"] / batch)
        theta = opt.step(theta, grad)
        net.set_vector(theta)
        losses.append(loss)
        if callback is not None:
            callback(it, loss)
    return net, np.array(losses)


def evaluate(net, distances, winds, drag=0.002, gravity=9.81, dt=0.01):
    """Miss [m] of the network's launch for each (distance, wind) pair."""
    angle, speed = net(distances, winds)
    steps = math.ceil(1.2 * 2 * net.speed_hi / gravity / dt)
    sim = Projectile(len(distances), steps=steps, dt=dt)
    sim.set_inputs(angle=angle, speed=speed, drag=drag, gravity=gravity, wind_x=winds,
                   target_x=distances)
    sim.forward("miss")
    return np.abs(sim.outputs()["land_x"] - np.asarray(distances))
