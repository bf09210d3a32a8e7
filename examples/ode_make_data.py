"""Write scenes/data/lotka_volterra_noisy.csv: Lotka–Volterra (1.5, 1.0, 3.0, 1.0),
u0 = (1, 1), 101 times in [0, 10], RK4 dt = 0.001, Gaussian noise of std 0.01 (seed 0)."""
import argparse
import pathlib

import numpy as np

import diffsim
from diffsim.ode import RK4, solve
from diffsim.ode.data import write_csv
from diffsim.ode.systems import SYSTEMS

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent.parent
                                         / "diffsim/scenes/data/lotka_volterra_noisy.csv"))
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    diffsim.init()
    ode = SYSTEMS["lotka_volterra"]
    ts = np.linspace(0, 10, 101)
    ys = solve(ode, (0, 10), [1, 1], [1.5, 1.0, 3.0, 1.0], solver=RK4(), dt=0.001, saveat=ts).ys[0]
    ys = ys + a.noise * np.random.default_rng(a.seed).standard_normal(ys.shape)
    write_csv(a.out, ts, ys, ode.state_names)
    print(f"wrote {a.out}")
