"""The neural aiming controller learns through the simulator; refinement finishes the job."""
import numpy as np
import pytest

import diffsim
from diffsim.tasks.aim_network import AimNetwork, evaluate, train_aim_network


def test_network_backward_matches_finite_differences():
    net = AimNetwork.create(hidden=5, seed=3)
    d, w = np.array([40.0, 90.0, 130.0]), np.array([-2.0, 0.5, 3.0])
    ca, cs = np.array([0.3, -1.2, 0.7]), np.array([0.01, 0.2, -0.05])  # a linear loss
    loss = lambda: float(np.dot(ca, net(d, w)[0]) + np.dot(cs, net(d, w)[1]))
    _, _, cache = net(d, w, cache=True)
    g = net.backward(cache, ca, cs)
    v = net.vector
    fd = np.zeros_like(v)
    for i in range(v.size):
        for s in (1, -1):
            vv = v.copy(); vv[i] += s * 1e-6; net.set_vector(vv)
            fd[i] += s * loss() / 2e-6
    net.set_vector(v)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_torch_training_takes_the_same_steps_as_the_numpy_network():
    """torch MLP + torch.optim.Adam through the torch layer == numpy MLP + hand-written
    chain rule + diffsim.Adam, to round-off: each checks the other's gradients."""
    pytest.importorskip("torch", reason="the torch extra is not installed "
                                        "(pip install 'diffsim[torch]')")
    start = AimNetwork.create(hidden=8, seed=2, d_scale=150.0).vector
    runs = [train_aim_network(AimNetwork.create(hidden=8, seed=2, d_scale=150.0), batch=16,
                              iterations=8, use_torch=t) for t in (True, False)]
    (net_t, loss_t), (net_n, loss_n) = runs
    assert np.abs(net_n.vector - start).max() > 0.01  # 8 Adam steps of lr 3e-3 moved it
    np.testing.assert_allclose(loss_t, loss_n, rtol=1e-12)
    np.testing.assert_allclose(net_t.vector, net_n.vector, rtol=1e-10, atol=1e-13)
    # the torch copy computes the numpy network's function
    torch = pytest.importorskip("torch")
    d, w = np.array([35.0, 120.0]), np.array([-4.0, 2.5])
    angle, speed = net_t.squash(net_t.to_torch()(torch.from_numpy(net_t.features(d, w))))
    np.testing.assert_allclose(np.stack([angle.detach(), speed.detach()]), net_t(d, w), rtol=1e-14)


def test_training_lowers_held_out_miss_and_refinement_hits():
    rng = np.random.default_rng(7)
    d_test, w_test = rng.uniform(30, 150, 24), rng.uniform(-5, 5, 24)
    net0 = AimNetwork.create(seed=0, d_scale=150.0)
    before = evaluate(net0, d_test, w_test).mean()
    net, losses = train_aim_network(AimNetwork.create(seed=0, d_scale=150.0), iterations=150,
                                    batch=128)
    after = evaluate(net, d_test, w_test).mean()
    assert after < 0.2 * before, (before, after)
    assert losses[-10:].mean() < 0.1 * losses[:10].mean()
    # refine one held-out target from the network's prediction
    a, s = net(d_test[:1], w_test[:1])
    pb = diffsim.build("cannon", [f"target.x=[{d_test[0]}]", f"physics.wind=[{w_test[0]}]",
                                  f"launch.angle={a[0]}", f"launch.speed={s[0]}",
                                  "optimize.params=['angle', 'speed']", "target.arc='any'",
                                  "optimize.bounds.speed=[5.0, 60.0]", "optimize.bounds.angle=[0.05, 0.8]",
                                  "optimize.optimizer='lbfgs'"])
    res, rep = pb.aim()
    assert rep["success"] and rep["miss"][0] < 1e-3
