"""The screen before training: an optimistic retention bound, and whether a candidate could extend the front."""

from __future__ import annotations

import pytest

from autokd.strategy import MARGIN, could_extend_front, dominating, hypervolume_gain, retention_bound

REFERENCE = (0.9, 1.0, 1.0)  # retention, compression, latency_ms
FRONT = [(0.96, 100.0, 0.2), (0.99, 20.0, 0.3)]


def test_the_bound_is_the_best_retention_of_students_at_least_as_large():
    assert retention_bound(50.0, FRONT) == pytest.approx(0.99 + MARGIN)
    assert retention_bound(150.0, FRONT) == pytest.approx(0.99 + MARGIN)


def test_a_student_larger_than_every_measured_one_is_unbounded():
    assert retention_bound(10.0, FRONT) == float("inf")


def test_a_candidate_bounded_below_a_smaller_faster_student_is_not_trained():
    # A 50x student retained 0.97, so a 60x one is bounded at 0.975; a 100x student at 0.98 is faster.
    completed = [(0.98, 100.0, 0.2), (0.97, 50.0, 0.5)]
    assert not could_extend_front(60.0, 0.3, completed, REFERENCE)


def test_a_candidate_smaller_than_the_front_is_trained():
    assert could_extend_front(400.0, 0.25, FRONT, REFERENCE)


def test_a_candidate_slower_than_the_reference_is_not_trained():
    assert not could_extend_front(400.0, 1.5, FRONT, REFERENCE)


def test_with_no_completed_student_every_candidate_is_trained():
    assert could_extend_front(50.0, 0.5, [], REFERENCE)


def test_the_gain_of_a_dominated_point_is_zero_and_dominating_names_it():
    assert hypervolume_gain((0.95, 90.0, 0.25), FRONT, REFERENCE) == pytest.approx(0.0)
    assert dominating((0.95, 90.0, 0.25), FRONT) == 0
    assert dominating((0.999, 90.0, 0.25), FRONT) is None


@pytest.mark.slow
def test_each_trained_student_is_the_best_of_its_measured_candidates(tiny_study, shared_runs):
    import autokd

    tiny_study["name"] = "candidates"
    tiny_study["sampler"] = {"kind": "random", "candidates": 3}
    tiny_study["budget"]["trials"] = 2
    result = autokd.search(
        tiny_study, runs_dir=shared_runs, reports_dir=None, log=lambda _: None, progress=False
    )
    trials = result.records.trials
    candidates = [t for t in trials if t.prescreened and t.prescreened.get("candidate")]
    chosen = [t for t in candidates if t.prescreened["reason"].startswith("candidate chosen")]
    assert len(candidates) == 3 and len(chosen) == 1 and result.completed == 2
    assert all(t.state == "PRUNED" and "train_seconds" not in t.attrs for t in candidates)
    assert chosen[0].prescreened["expected_gain"] == max(t.prescreened["expected_gain"] for t in candidates)
    (second,) = [t for t in trials if t.completed and t.number > chosen[0].number]
    assert second.params == chosen[0].params


def _config(**changes):
    from autokd.trial import TrialConfig

    settings = {"family": "resnet", "width": 0.125, "depth": 0.5, "stem": "small"}
    return TrialConfig(**{**settings, **changes})


def _key(config, data=None):
    from types import SimpleNamespace

    from autokd.trial import architecture_key, new_student

    data = data or SimpleNamespace(num_classes=10, in_chans=1)
    return architecture_key(new_student(config, data), config)


def test_the_architecture_key_ignores_what_does_not_change_the_network():
    plain = _key(_config())
    assert _key(_config(methods=("rkd",), distillation_share=0.3, qat=True, seed=7)) == plain


def test_the_architecture_key_tells_different_networks_and_deployments_apart():
    plain = _key(_config())
    assert _key(_config(width=0.375)) != plain
    assert _key(_config(depth=1.0)) != plain
    assert _key(_config(latency_threads=2)) != plain


@pytest.mark.slow
def test_a_search_measures_each_architecture_once_per_process(tiny_resources, monkeypatch):
    import optuna

    import autokd.runner as runner_module
    from autokd.runner import TrialRunner

    calls = []
    measure = runner_module.measure_student
    monkeypatch.setattr(
        runner_module, "measure_student", lambda *args, **kwargs: calls.append(1) or measure(*args, **kwargs)
    )
    runner = TrialRunner(
        tiny_resources, optuna.create_study(directions=["maximize"] * 3), emit=lambda _: None
    )
    first = runner._measure(_config(methods=("hinton_kd",)))
    again = runner._measure(_config(methods=("rkd",), distillation_share=0.3))
    other = runner._measure(_config(width=0.25))
    assert len(calls) == 2
    assert again["latency_ms"] == first["latency_ms"] and again["measured_before"]
    assert other["architecture"] != first["architecture"]
