"""A neural aiming controller trained through the simulator ("differentiable programming").

A small MLP maps (target distance, wind) to (elevation, speed) within bounds. Training
samples a batch of targets and winds, simulates all of them in one batched launch, and
backpropagates the batch's mean ½·miss² through the simulation (Taichi reverse mode, via
:class:`diffsim.interop.ProjectileMap`) and then through the network. With PyTorch
installed (``pip install 'diffsim[torch]'``) the network is a ``torch.nn`` MLP trained by
``torch.optim.Adam`` through :class:`diffsim.torch.SimulationLayer`; without it, the same
MLP in numpy (:class:`AimNetwork`, with its hand-written backward) and diffsim's Adam.
Both start from the same weights and take the same steps, so they give the same numbers
up to round-off. Its predictions then start per-target refinement with
:meth:`CannonProblem.aim`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math

import numpy as np

from ..interop import ProjectileMap
from ..optim import Adam
from ..systems.projectile import Projectile

#: columns of the simulator layer's input, one row per cannon
LAYER_INPUTS = ("angle", "speed", "wind_x", "target_x")


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

    def features(self, distance, wind):
        """The MLP's input rows (d/d_scale, w/w_scale), shape (B, 2)."""
        return np.stack([np.asarray(distance, dtype=np.float64) / self.d_scale,
                         np.asarray(wind, dtype=np.float64) / self.w_scale], axis=1)

    def squash(self, S):
        """(angle [rad], speed [m/s]) from the sigmoid outputs S (B, 2): numpy or torch."""
        return (self.angle_lo + (self.angle_hi - self.angle_lo) * S[:, 0],
                self.speed_lo + (self.speed_hi - self.speed_lo) * S[:, 1])

    def __call__(self, distance, wind, cache=False):
        """(angle [rad], speed [m/s]) for arrays of target distances [m] and winds [m/s]."""
        X = self.features(distance, wind)
        H = np.tanh(X @ self.W1 + self.b1)
        S = 1 / (1 + np.exp(-(H @ self.W2 + self.b2)))
        angle, speed = self.squash(S)
        return (angle, speed, (X, H, S)) if cache else (angle, speed)

    def to_torch(self):
        """The same MLP as a float64 ``torch.nn.Sequential`` (Linear, Tanh, Linear,
        Sigmoid) with these weights; :meth:`squash` maps its output to (angle, speed)."""
        import torch
        h = self.b1.size
        mlp = torch.nn.Sequential(torch.nn.Linear(2, h), torch.nn.Tanh(), torch.nn.Linear(h, 2),
                                  torch.nn.Sigmoid()).double()
        with torch.no_grad():  # torch's Linear computes x @ weight.T
            for lin, W, b in ((mlp[0], self.W1, self.b1), (mlp[2], self.W2, self.b2)):
                lin.weight.copy_(torch.from_numpy(W.T))
                lin.bias.copy_(torch.from_numpy(b))
        return mlp

    def load_torch(self, mlp):
        """Take the weights of a :meth:`to_torch` MLP."""
        W1, b1, W2, b2 = (t.detach().cpu().numpy().astype(np.float64) for t in
                          (mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias))
        self.set_vector(np.concatenate([W1.T.ravel(), b1, W2.T.ravel(), b2]))

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
                      callback=None, use_torch=None):
    """Train ``net`` (default a fresh AimNetwork) to hit targets at ``distances`` [m] in
    ``winds`` [m/s]; returns (net, losses) with the trained weights in ``net``. Each
    iteration: one batched simulation of ``batch`` cannons with new random targets,
    loss = mean ½·miss² [m²], one Adam step (lr, β = (0.9, 0.99), ε = 1e-12).
    use_torch: train a torch copy of the MLP with torch.optim.Adam through the torch
    layer (True), the numpy MLP (False), or torch when it is installed (None)."""
    net = net or AimNetwork.create(seed=seed, d_scale=distances[1])
    if use_torch is None:
        use_torch = importlib.util.find_spec("torch") is not None
    rng = np.random.default_rng(seed + 1)
    steps = math.ceil(1.2 * 2 * net.speed_hi / gravity / dt)
    sim = Projectile(batch, steps=steps, dt=dt)
    sim.set_inputs(drag=drag, gravity=gravity)
    half_miss2 = ProjectileMap(sim, LAYER_INPUTS)  # rows (angle, speed, wind, target) -> ½·miss²
    step, finish = (_torch_trainer if use_torch else _numpy_trainer)(net, half_miss2, lr)
    losses = []
    for it in range(iterations):
        d = rng.uniform(*distances, batch)
        w = rng.uniform(*winds, batch)
        losses.append(step(d, w))
        if callback is not None:
            callback(it, losses[-1])
    finish()
    return net, np.array(losses)


def _numpy_trainer(net, half_miss2, lr):
    """(step(d, w) -> loss, finish()): the numpy MLP, its chain rule and diffsim's Adam."""
    opt = Adam(lr=lr, beta2=0.99)

    def step(d, w):
        angle, speed, cache = net(d, w, cache=True)
        Y, G = half_miss2(np.stack([angle, speed, w, d], axis=1))
        n = len(d)
        net.set_vector(opt.step(net.vector, net.backward(cache, G[:, 0] / n, G[:, 1] / n)))
        return float(Y.mean())

    return step, lambda: None


def _torch_trainer(net, half_miss2, lr):
    """(step(d, w) -> loss, finish()): a torch copy of the MLP, torch.optim.Adam and the
    simulator as a torch layer; finish() writes the trained weights back into ``net``."""
    import torch

    from ..torch import SimulationLayer
    mlp = net.to_torch()
    layer = SimulationLayer(half_miss2)
    opt = torch.optim.Adam(mlp.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-12)

    def step(d, w):
        S = mlp(torch.from_numpy(net.features(d, w)))
        angle, speed = net.squash(S)
        loss = layer(torch.stack([angle, speed, torch.from_numpy(w), torch.from_numpy(d)],
                                 dim=1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step, lambda: net.load_torch(mlp)


def evaluate(net, distances, winds, drag=0.002, gravity=9.81, dt=0.01):
    """Miss [m] of the network's launch for each (distance, wind) pair."""
    angle, speed = net(distances, winds)
    steps = math.ceil(1.2 * 2 * net.speed_hi / gravity / dt)
    sim = Projectile(len(distances), steps=steps, dt=dt)
    sim.set_inputs(angle=angle, speed=speed, drag=drag, gravity=gravity, wind_x=winds,
                   target_x=distances)
    sim.forward("miss")
    return np.abs(sim.outputs()["land_x"] - np.asarray(distances))
