"""The one [optimize] scene section: every kind reads it, old names are refused naming the new."""
import pytest

import diffsim
from diffsim import scene as scene_mod
from diffsim.cli import main
from diffsim.errors import SceneError
from diffsim.optim import LBFGS, SECOND_ORDER, Adam, GradientDescent, optimize_schema
from diffsim.scene import RENAMED, Key, bundled_scenes, load

# (bundled scene, old TOML text -> replacement that brings back an old name, old key, new key)
OLD_IN_FILE = [
    ("spring_triangle", ("[optimize]", "[optim]"), ("optimizer =", "method ="), "optim.method",
     "optimize.optimizer"),
    ("spring_triangle", ("[optimize]\nparams", "[optim]\nclip"), None, "optim.clip", "optimize.clip"),
    ("spring_triangle", ("[task]\n", '[task]\noptimize = ["rest"]\n'), None, "task.optimize",
     "optimize.params"),
    ("oscillator", ("[optimize]\nparams", "[fit]\noptimize"), None, "fit.optimize", "optimize.params"),
    ("lotka_volterra", ("[optimize]\nparams", "[fit]\nparams"), None, "fit.optimizer",
     "optimize.optimizer"),
    ("lotka_volterra", ("[optimize]\nparams", "[fit]\nparams"), ('optimizer = "lbfgs"\n', ""),
     "fit.iterations", "optimize.iterations"),
    ("oscillator", ("[optimize]\nparams", "[optimize]\nparams = []\n[fit]\nlr = 0.1\n#"), None,
     "fit.lr", "optimize.lr"),
    ("oscillator", ("[optimize]\nparams", "[optimize]\nparams = []\n[fit]\n#"), None, "fit",
     "[optimize]"),
]


def _old_file(tmp_path, name, *reps):
    text = bundled_scenes()[name].read_text()
    for rep in reps:
        if rep is not None:
            assert rep[0] in text, (name, rep)
            text = text.replace(rep[0], rep[1], 1)
    p = tmp_path / "old.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name,rep1,rep2,old,new", OLD_IN_FILE)
def test_old_key_in_a_file_is_refused_naming_the_new(tmp_path, name, rep1, rep2, old, new):
    p = _old_file(tmp_path, name, rep1, rep2)
    with pytest.raises(SceneError) as e:
        load(p)
    msg = str(e.value)
    assert str(p) in msg and f"'{old}'" in msg and f"use {new}" in msg, msg


OLD_SET = [
    ("robot_a", 'optim.method="gd"', "optim.method", "optimize.optimizer"),
    ("robot_a", "optim.lr=0.5", "optim.lr", "optimize.lr"),
    ("robot_a", "optim.iterations=3", "optim.iterations", "optimize.iterations"),
    ("robot_a", "optim.clip=1.0", "optim.clip", "optimize.clip"),
    ("robot_a", "optim.max_grad_norm=1.0", "optim.max_grad_norm", "optimize.max_grad_norm"),
    ("spring_triangle", 'task.optimize=["stiffness"]', "task.optimize", "optimize.params"),
    ("oscillator", 'fit.optimize=["omega"]', "fit.optimize", "optimize.params"),
    ("oscillator", 'fit.optimizer="lm"', "fit.optimizer", "optimize.optimizer"),
    ("oscillator", "fit.iterations=5", "fit.iterations", "optimize.iterations"),
    ("oscillator", "fit.lr=0.1", "fit.lr", "optimize.lr"),
]


@pytest.mark.parametrize("name,override,old,new", OLD_SET)
def test_old_key_in_set_is_refused_naming_the_new(name, override, old, new):
    with pytest.raises(SceneError) as e:
        load(name, [override])
    msg = str(e.value)
    assert f"'{old}'" in msg and f"use {new}" in msg, msg


def test_cli_old_key_exits_2_naming_the_new(capsys):
    assert main(["grad", "oscillator", "--set", 'fit.optimizer="lm"']) == 2
    err = capsys.readouterr().err
    assert "fit.optimizer" in err and "optimize.optimizer" in err and "Traceback" not in err
    assert main(["optimize", "robot_a", "--no-plot", "--set", 'optim.method="gd"']) == 2
    err = capsys.readouterr().err
    assert "optim.method" in err and "optimize.optimizer" in err and "Traceback" not in err


def test_every_new_name_exists_and_no_old_name_is_a_key():
    """A rename must point at a key that some kind has, and no kind may still have the old one."""
    keys = set()
    for kind in scene_mod.KINDS:
        schema = scene_mod.kind_module(kind).SCHEMA
        assert "optim" not in schema and "fit" not in schema, kind
        assert "optimize" not in schema.get("task", {}), kind
        keys |= {f"optimize.{k}" for k in schema["optimize"]}
    for old, new in RENAMED.items():
        assert new == "[optimize]" or new in keys, (old, new)


# every kind's defaults, as they were before the sections were merged: scenes must not change
OLD_DEFAULTS = {
    "cannon": {"params": ["angle"], "bounds": {}, "optimizer": "adam", "iterations": 300, "lr": 0.02,
               "decay": 0.98, "beta2": 0.9, "method": "discrete", "seed": 0},
    "mass_spring": {"params": ["controller"], "optimizer": "adam", "lr": 0.01, "iterations": 100,
                    "clip": 0.0, "max_grad_norm": 1e12},
    "ode": {"params": [], "optimizer": "lbfgs", "iterations": 200, "lr": 0.05},
}
OLD_CHOICES = {"cannon": ("adam", "lbfgs"), "mass_spring": ("adam", "gd", "lbfgs"),
               "ode": ("lbfgs", "adam", "lm", "gauss-newton")}


@pytest.mark.parametrize("kind", sorted(OLD_DEFAULTS))
def test_each_kind_keeps_its_defaults(kind):
    sec = scene_mod.kind_module(kind).SCHEMA["optimize"]
    assert {k: v.default for k, v in sec.items()} == OLD_DEFAULTS[kind]
    # plus the second-order optimisers, which every kind accepts (they need only gradients)
    assert set(sec["optimizer"].choices) == set(OLD_CHOICES[kind]) | set(SECOND_ORDER)


def test_optimize_schema_refuses_an_unknown_optimizer():
    with pytest.raises(ValueError, match="adam, gd, lbfgs, newton, newton-cg, gauss-newton, lm"):
        optimize_schema(Key("any", []), ("adam", "bfgs"), optimizer="adam", iterations=1, lr=0.1)
    with pytest.raises(ValueError):
        optimize_schema(Key("any", []), ("adam",), optimizer="lbfgs", iterations=1, lr=0.1)


def test_cannon_reads_the_optimize_section():
    pb = diffsim.build("cannon")
    opt = pb.make_optimizer()
    assert isinstance(opt, Adam) and (opt.lr, opt.decay, opt.beta2) == (0.02, 0.97, 0.9)
    pb = diffsim.build("cannon", ['optimize.optimizer="lbfgs"', 'optimize.params=["angle", "speed"]'])
    assert isinstance(pb.make_optimizer(), LBFGS)
    assert [n for n, f in zip(pb.params.names, pb.params.free) if f] == ["angle", "speed"]


def test_mass_spring_reads_the_optimize_section():
    pb = diffsim.build("spring_triangle", ['optimize.optimizer="gd"', "optimize.lr=0.5",
                                           "optimize.clip=2.0", 'optimize.params=["stiffness"]'])
    opt = pb.make_optimizer()
    assert isinstance(opt, GradientDescent) and opt.lr == 0.5 and opt.clip == 2.0 and opt.normalize
    assert pb.groups == ["stiffness"]
    assert isinstance(diffsim.build("robot_a").make_optimizer(), Adam)
    assert isinstance(diffsim.build("cloth_drop").make_optimizer(), LBFGS)
    with pytest.raises(SceneError, match="'optimize.params'"):
        load("spring_triangle", ['optimize.params=["wings"]'])


def test_ode_reads_the_optimize_section():
    pb = diffsim.build("oscillator", ['optimize.optimizer="lm"', "optimize.iterations=5",
                                      'optimize.params=["omega"]'])
    assert [n for n, f in zip(pb.params.names, pb.params.free) if f] == ["omega"]
    r = pb.fit(plots=False)
    assert r["optimizer"] == "lm" and list(r["params"]) == pb.params.names
    assert list(r["std_errors"]) == ["omega"] and r["iterations"] <= 5
    with pytest.raises(SceneError, match="'optimize.params'"):
        load("oscillator", ['optimize.params=["mass"]'])
