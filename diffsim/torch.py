"""PyTorch layers: a diffsim Problem or batched Projectile as a ``torch.autograd.Function``.

    import diffsim, diffsim.torch
    pb = diffsim.build("cannon", ["optimize.params=['angle', 'speed']"])
    f = diffsim.torch.SimulationLayer(pb)           # x (n,) -> objective, or (B, n) -> (B,)
    x = torch.tensor(pb.x0(), requires_grad=True)
    f(x).backward()                                 # x.grad == pb.value_and_grad(x)[1]

    sim = Projectile(256, steps=1500, dt=0.01)      # 256 cannons, one kernel launch per pass
    miss = diffsim.torch.SimulationLayer(sim, inputs=("angle", "speed"))  # (256, 2) -> (256,)

Gradients come from diffsim (``value_and_grad`` by the Problem's method, or the
projectile's reverse pass), not from torch; see :mod:`diffsim.interop` for what the maps
compute. The tensor's dtype and device must match diffsim's precision and arch
(float64 ↔ 'f64', float32 ↔ 'f32'; cpu ↔ 'cpu', cuda ↔ 'cuda'), else DiffsimError.
Values pass through host memory as numpy arrays. Backward is once-differentiable (no
Hessians through the layer). Needs the ``torch`` extra: ``pip install 'diffsim[torch]'``.
"""
from __future__ import annotations

try:
    import torch
except ImportError:  # the optional extra is missing
    raise ImportError("diffsim.torch needs PyTorch: pip install 'diffsim[torch]' "
                      "(or pip install torch)") from None

from . import interop
from .errors import DiffsimError

__all__ = ["SimulationLayer", "Simulate"]


def _check(x):
    if not isinstance(x, torch.Tensor):
        raise DiffsimError(f"a diffsim torch layer takes a torch.Tensor, got {type(x).__name__}")
    interop.check_runtime(str(x.dtype).removeprefix("torch."), x.device.type, "torch",
                          fix_dtype="convert the tensor (x.double() / x.float())",
                          fix_device="move the tensor (x.to('cpu') / x.to('cuda'))")


class Simulate(torch.autograd.Function):
    """``Simulate.apply(x, m)``: the outputs of map ``m`` (an :mod:`diffsim.interop` map)
    at tensor ``x``, differentiable in ``x``. The forward pass also takes the gradients
    (one reverse pass) when ``x`` needs them; backward multiplies them by the cotangent."""

    @staticmethod
    def forward(ctx, x, m):
        _check(x)
        need = bool(ctx.needs_input_grad[0])
        Y, G = m(x.detach().to("cpu", torch.float64).numpy(), need_grad=need)
        if need:
            ctx.save_for_backward(torch.as_tensor(G, dtype=x.dtype, device=x.device))
        return torch.as_tensor(Y, dtype=x.dtype, device=x.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        (G,) = ctx.saved_tensors
        # Y[b] depends only on row b of x: d(gy·Y)/dx[b] = gy[b]·G[b]
        return G * gy.unsqueeze(-1), None


class SimulationLayer(torch.nn.Module):
    """A diffsim Problem or Projectile as a torch module (no trainable parameters).

    obj: a :class:`diffsim.Problem` (x of shape (n,) -> its objective, a 0-d tensor;
    (B, n) -> (B,), one evaluation per row; option ``method``: the gradient method) or a
    :class:`~diffsim.systems.projectile.Projectile` of B cannons (x of shape (B, k) ->
    each cannon's objective term (B,) in one batched pass; options ``inputs`` (the k
    input names, required), ``objective``, ``maximize``, ``strict``), or a map from
    :mod:`diffsim.interop`."""

    def __init__(self, obj, **options):
        super().__init__()
        self.map = interop.as_map(obj, **options)

    def forward(self, x):
        return Simulate.apply(x, self.map)
