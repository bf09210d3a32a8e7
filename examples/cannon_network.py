"""Train a neural aiming controller through the simulator, then refine its aims.

    python examples/cannon_network.py [--iterations 300] [--numpy] [--out diffsim-out/cannon_network]

With PyTorch installed the network is a torch MLP trained by torch.optim.Adam through
``diffsim.torch.SimulationLayer`` (the batched simulator as an autograd Function);
``--numpy`` (or no torch) trains the same MLP in numpy: same numbers up to round-off.
Prints the mean miss on held-out targets from the network alone and after per-target
refinement (L-BFGS started at the network's prediction), and plots miss vs distance.
"""
import argparse
import importlib.util
import pathlib
import time

import numpy as np

import diffsim
from diffsim.plots import cannon as plots, common
from diffsim.tasks.aim_network import AimNetwork, evaluate, train_aim_network


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--held-out", type=int, default=12)
    ap.add_argument("--numpy", action="store_true", help="train the numpy MLP even with torch")
    ap.add_argument("--out", default="diffsim-out/cannon_network")
    args = ap.parse_args()
    diffsim.init()
    rng = np.random.default_rng(123)
    d, w = rng.uniform(30, 150, args.held_out), rng.uniform(-5, 5, args.held_out)
    untrained = evaluate(AimNetwork.create(seed=0, d_scale=150.0), d, w)
    use_torch = not args.numpy and importlib.util.find_spec("torch") is not None
    t0 = time.perf_counter()
    net, losses = train_aim_network(AimNetwork.create(seed=0, d_scale=150.0),
                                    iterations=args.iterations, use_torch=use_torch)
    print(f"trained {args.iterations} iterations in {time.perf_counter() - t0:.1f} s with "
          + ("a torch MLP, torch.optim.Adam and diffsim.torch.SimulationLayer" if use_torch
             else "the numpy MLP and diffsim.Adam")
          + f"; loss (mean ½·miss², m²) {losses[0]:.4g} -> {losses[-1]:.4g}")
    predicted = evaluate(net, d, w)
    refined = []
    for di, wi in zip(d, w):
        a, s = net(np.array([di]), np.array([wi]))
        pb = diffsim.build("cannon", [f"target.x=[{di}]", f"physics.wind=[{wi}]",
                                      f"launch.angle={a[0]}", f"launch.speed={s[0]}",
                                      "optimize.params=['angle', 'speed']", "target.arc='any'",
                                      "optimize.bounds.speed=[5.0, 60.0]",
                                      "optimize.bounds.angle=[0.05, 0.8]",
                                      "optimize.optimizer='lbfgs'", "sim.dt=0.01"])
        refined.append(pb.aim()[1]["miss"][0])
    print(f"held-out mean miss: untrained {untrained.mean():.3g} m, trained network "
          f"{predicted.mean():.3g} m, after refinement {np.mean(refined):.2e} m")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("plot:", common.save(plots.miss_vs_distance_figure(d, predicted, refined), out, "miss.png"))


if __name__ == "__main__":
    main()
