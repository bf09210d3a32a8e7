"""The neural aiming controller learns through the simulator; refinement finishes the job."""
import numpy as np

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
