"""diffsim.torch and diffsim.jax: gradients through the layers equal diffsim's own, central
finite differences through the layer, and the vacuum closed form; mismatched dtype or
device and a missing extra are refused with a clear message."""
import importlib
import sys

import numpy as np
import pytest

import diffsim
from diffsim.errors import DiffsimError
from diffsim.systems.projectile import Projectile


def need(name):
    """The extra's module, or skip: CI installs both through the test extra."""
    return pytest.importorskip(name, reason=f"the {name} extra is not installed "
                                            f"(pip install 'diffsim[{name}]')")


@pytest.fixture(scope="module")
def cannon():
    """One cannon with drag and wind: 7 parameters, objective ½·miss² [m²]."""
    return diffsim.build("cannon", ["optimize.params=['angle', 'speed']"])


@pytest.fixture(scope="module")
def cannons():
    """Three cannons with drag; the layer's columns are angle, speed, wind_x, target_x."""
    sim = Projectile(3, steps=1200, dt=0.01)
    sim.set_inputs(drag=0.002, gravity=9.81)
    X = np.array([[0.3, 40.0, -2.0, 60.0], [0.6, 30.0, 1.0, 90.0], [0.9, 25.0, 3.5, 20.0]])
    return sim, ("angle", "speed", "wind_x", "target_x"), X


@pytest.fixture
def jax_x64():
    jax = need("jax")
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", old)


def central_fd(f, x, h=1e-6):
    """d f / d x by central differences, step h·max(|x_i|, 1e-3) (f: float64 array -> float)."""
    g = np.zeros_like(x)
    for i in range(x.size):
        hi = h * max(abs(x.flat[i]), 1e-3)
        xp, xm = x.copy(), x.copy()
        xp.flat[i] += hi
        xm.flat[i] -= hi
        g.flat[i] = (f(xp) - f(xm)) / (2 * hi)
    return g


# -- torch ---------------------------------------------------------------------------
def test_torch_problem_layer_gradient_is_diffsims_and_matches_finite_differences(cannon):
    torch = need("torch")
    from diffsim.torch import SimulationLayer
    layer = SimulationLayer(cannon)
    x0 = cannon.x0()
    x = torch.tensor(x0, requires_grad=True)
    y = layer(x)
    y.backward()
    f, g = cannon.value_and_grad(x0)
    assert y.shape == () and y.dtype == torch.float64 and y.item() == pytest.approx(f, rel=1e-14)
    np.testing.assert_allclose(x.grad.numpy(), g, rtol=1e-12, atol=0)
    assert np.count_nonzero(g) >= 6  # a real gradient: all but restitution (no bounce)
    fd = central_fd(lambda v: layer(torch.tensor(v)).item(), x0)
    np.testing.assert_allclose(x.grad.numpy(), fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())
    # a batch of parameter vectors: one objective per row, VJP = cotangent_b · grad_b
    X = torch.tensor(np.stack([x0, x0 * [1.05, 0.97, 1, 1, 1, 1, 1]]), requires_grad=True)
    c = torch.tensor([0.7, -1.3], dtype=torch.float64)
    (layer(X) * c).sum().backward()
    g1 = cannon.value_and_grad(X[1].detach().numpy())[1]
    np.testing.assert_allclose(X.grad.numpy(), [0.7 * g, -1.3 * g1], rtol=1e-12)


def test_torch_projectile_layer_is_one_batched_pass_with_exact_vjp(cannons):
    torch = need("torch")
    from diffsim.torch import SimulationLayer
    sim, names, X0 = cannons
    layer = SimulationLayer(sim, inputs=names)
    X = torch.tensor(X0, requires_grad=True)
    calls = layer.map.calls
    y = layer(X)
    c = torch.tensor([0.5, -2.0, 1.5], dtype=torch.float64)
    (y * c).sum().backward()
    assert layer.map.calls == calls + 1   # forward and reverse for all 3 cannons: one pass
    # the per-cannon terms add up to the kernel's batch objective
    assert y.sum().item() == pytest.approx(sim.forward("miss"), rel=1e-12)
    assert np.all(y.detach().numpy() > 1.0)  # every cannon misses: gradients are not zero
    fd = central_fd(lambda v: float(c.numpy() @ layer(torch.tensor(v)).numpy()), X0)
    np.testing.assert_allclose(X.grad.numpy(), fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())
    assert torch.autograd.gradcheck(layer, (torch.tensor(X0, requires_grad=True),),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)


def test_torch_projectile_range_matches_the_vacuum_closed_form():
    torch = need("torch")
    from diffsim.torch import SimulationLayer
    sim = Projectile(2, steps=800, dt=0.01)  # RK4 in vacuum is exact: range = v²·sin 2θ / g
    sim.set_inputs(drag=0.0, gravity=9.81)
    layer = SimulationLayer(sim, inputs=("angle", "speed"), objective="range")
    X = torch.tensor([[0.4, 20.0], [1.0, 25.0]], dtype=torch.float64, requires_grad=True)
    r = layer(X)
    r.sum().backward()
    th, v = X.detach().numpy().T
    g = 9.81
    np.testing.assert_allclose(r.detach().numpy(), v ** 2 * np.sin(2 * th) / g, rtol=1e-9)
    np.testing.assert_allclose(X.grad.numpy(), np.stack(
        [2 * v ** 2 * np.cos(2 * th) / g, 2 * v * np.sin(2 * th) / g], axis=1), rtol=1e-8)


def test_torch_layer_refuses_a_mismatched_dtype_device_or_shape(cannon, cannons):
    torch = need("torch")
    from diffsim.torch import SimulationLayer
    layer = SimulationLayer(cannon)
    with pytest.raises(DiffsimError, match=r"torch dtype float32 .* precision 'f64'.*x\.double"):
        layer(torch.tensor(cannon.x0(), dtype=torch.float32))
    with pytest.raises(DiffsimError, match=r"torch device 'meta' .* arch 'cpu'"):
        layer(torch.empty(7, dtype=torch.float64, device="meta"))
    with pytest.raises(DiffsimError, match=r"shape \(7,\).*got shape \(3,\)"):
        layer(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(DiffsimError, match=r"expected shape \(3, 4\)"):
        SimulationLayer(cannons[0], inputs=cannons[1])(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(DiffsimError, match="inputs="):
        SimulationLayer(cannons[0], inputs=("angle", "muzzle"))
    with pytest.raises(DiffsimError, match="a Projectile layer needs inputs"):
        SimulationLayer(cannons[0])


# -- jax -----------------------------------------------------------------------------
def test_jax_jit_grad_is_diffsims_and_matches_finite_differences(cannon, jax_x64):
    jax, jnp = jax_x64, jax_x64.numpy
    from diffsim.jax import function
    f = function(cannon)
    x0 = cannon.x0()
    g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(x0)))
    ref = cannon.value_and_grad(x0)[1]
    np.testing.assert_allclose(g, ref, rtol=1e-12, atol=0)
    fj = jax.jit(f)
    assert float(fj(jnp.asarray(x0))) == pytest.approx(cannon.objective(x0), rel=1e-14)
    fd = central_fd(lambda v: float(fj(jnp.asarray(v))), x0)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())
    # vmap: one callback per row, same gradients as one at a time
    X = np.stack([x0, x0 * [0.9, 1.1, 1, 1, 1, 1, 1]])
    G = np.asarray(jax.jit(jax.vmap(jax.grad(f)))(jnp.asarray(X)))
    np.testing.assert_allclose(G[1], cannon.value_and_grad(X[1])[1], rtol=1e-12)


def test_jax_projectile_vjp_under_jit_matches_finite_differences(cannons, jax_x64):
    jax, jnp = jax_x64, jax_x64.numpy
    from diffsim.jax import function
    sim, names, X0 = cannons
    f = function(sim, inputs=names)
    c = np.array([-1.0, 0.25, 2.0])
    loss = jax.jit(lambda X: jnp.dot(jnp.asarray(c), f(X)))
    calls = f.map.calls
    g = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(X0)))
    assert f.map.calls == calls + 1   # one batched pass for the 3 cannons
    fd = central_fd(lambda v: float(loss(jnp.asarray(v))), X0)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())


def test_jax_function_refuses_float32(cannon, jax_x64):
    jnp = jax_x64.numpy
    from diffsim.jax import function
    with pytest.raises(DiffsimError, match=r"jax dtype float32 .* precision 'f64'.*jax_enable_x64"):
        jax_x64.jit(function(cannon))(jnp.asarray(cannon.x0(), dtype=jnp.float32))


# -- without the extras ----------------------------------------------------------------
@pytest.mark.parametrize("extra", ["torch", "jax"])
def test_a_missing_extra_is_named_with_the_install_command(extra, monkeypatch):
    monkeypatch.setitem(sys.modules, extra, None)   # import of it fails, as if not installed
    monkeypatch.delitem(sys.modules, f"diffsim.{extra}", raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'diffsim\[{extra}\]'"):
        importlib.import_module(f"diffsim.{extra}")
