"""Test set-up: one runtime (cpu, float64) for the whole session (taichi-notes 5), on the
backend DIFFSIM_BACKEND names (default taichi); the ``gradient`` marker."""
import os

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("TI_LOG_LEVEL", "warn")
os.environ.setdefault("QD_LOG_LEVEL", "warn")

#: Finite-difference / closed-form gradient tests that run on every backend: marked
#: ``gradient`` here (not in each file) and run again with DIFFSIM_BACKEND=quadrants by
#: tests/test_backends.py. A node id prefix per entry; each must match a collected test
#: when that file is collected (a renamed test fails the session instead of dropping out).
#: Since diffsim's kernels avoid the pattern Quadrants 1.3.3 differentiates wrongly
#: (taichi-notes 33), bounces, forward mode and the explicit ODE solvers are listed too;
#: test_backends.py::test_paths_once_refused_on_quadrants_are_right_on_both checks the
#: once-refused paths and the one refusal left (an rhs computing with a vector of y).
GRADIENT_TESTS = (
    "test_projectile.py::test_range_and_gradients_match_vacuum_closed_form",
    "test_projectile.py::test_3d_gradients_including_azimuth_and_cross_wind",
    "test_projectile.py::test_segmented_horizon_equals_a_single_segment",
    "test_cannon_physics.py::test_deflated_first_step_gradients_match_central_differences_with_drag",
    "test_mass_spring.py::test_gradients_with_ground_contact_and_sine_controller",
    "test_mass_spring.py::test_gradients_neural_controller_robot_a_short",
    "test_mass_spring.py::test_elastic_bounce_height_derivative_is_minus_one",
    "test_mass_spring.py::test_problem_gradcheck_triangle",
    "test_mass_spring_options.py::test_option_gradients_match_central_fd",
    "test_mass_spring_options.py::test_gradients_exact_for_more_springs_than_the_autodiff_stack",
    "test_mass_spring_options.py::test_identifiability_report_and_jacobian_against_reverse_mode",
    "test_ode_implicit.py",
    "test_gradient_methods.py::test_mass_spring_forward_mode_matches_central_differences",
    "test_gradient_methods.py::test_mass_spring_problem_forward_and_its_limit",
    "test_gradient_methods.py::test_cannon_adjoint_without_bounces_against_the_exact_ode",
    "test_hessian.py::test_cannon_hessian_matches_the_vacuum_closed_form",
    "test_backends.py::test_paths_once_refused_on_quadrants_are_right_on_both",
    "test_ode_gradients.py",
    "test_ode_quadrants.py",
    "test_ode_methods.py::test_lv_rk4_forward_equals_discrete_and_fd",
    "test_ode_methods.py::test_lv_rk4_adjoint_converges_to_discrete",
    "test_ode_methods.py::test_dopri5_gradients_on_accepted_steps",
    "test_gradient_methods.py::test_cannon_forward_mode_equals_reverse_mode_and_central_differences",
    # the registries' grid: a cell per gradient method and kind of step (all 36 pass on
    # Quadrants too, measured; a subset keeps the Quadrants run short)
    "test_grid.py::test_gradient_matches_central_differences[cannon_bounce-rk4-forward]",
    "test_grid.py::test_gradient_matches_central_differences[cannon_bounce-midpoint-adjoint]",
    "test_grid.py::test_gradient_matches_central_differences[pendulum-leapfrog-forward]",
    "test_grid.py::test_gradient_matches_central_differences[pendulum-midpoint-adjoint]",
    "test_grid.py::test_gradient_matches_central_differences[pendulum-dopri5-discrete]",
    "test_grid.py::test_gradient_matches_central_differences[spring_triangle-forward]",
    "test_projectile_reverse.py::test_equals_central_differences",
    "test_projectile_reverse.py::test_impact_fraction_derivative_of_a_deflated_first_step",
    "test_tape.py::test_gradient_matches_the_closed_form_and_central_differences",
    "test_partitioned.py::test_adjoint_and_dh_match_central_differences",
)


def pytest_configure(config):
    config.addinivalue_line("markers", "gradient: gradient checks run on every backend "
                                       "(tests/conftest.py GRADIENT_TESTS)")


def pytest_collection_modifyitems(config, items):
    files = {item.nodeid.split("::")[0].split("/")[-1] for item in items}
    used = set()
    for item in items:
        short = item.nodeid.split("/")[-1]
        for entry in GRADIENT_TESTS:
            if short == entry or short.startswith(entry + "[") or short.startswith(entry + "::") \
                    or (entry.endswith(".py") and short.startswith(entry)):
                item.add_marker(pytest.mark.gradient)
                used.add(entry)
    stale = [e for e in GRADIENT_TESTS if e.split("::")[0] in files and e not in used]
    if stale and not config.getoption("-k") and not config.getoption("--deselect"):
        raise pytest.UsageError(f"conftest.GRADIENT_TESTS names tests that do not exist: {stale}")


@pytest.fixture(scope="session", autouse=True)
def runtime():
    import diffsim
    return diffsim.init(arch="cpu", precision="f64")


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(tmp_path, monkeypatch):
    """Every test runs in its own empty working directory, so a verb's default output
    folder (diffsim-out/<scene>) never lands in the checkout."""
    monkeypatch.chdir(tmp_path)
