"""Warm starts on digits: an earlier sweep in a sqlite store seeds a new study with its finished
trials; values no longer searched are dropped with one line; --dry-run counts them."""

from __future__ import annotations

import os

import pytest
import yaml

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def spec_file(tmp_path, name: str, **over) -> str:
    data = {"name": name, "data": {"name": "digits", "train_limit": 300, "val_fraction": 0.2},
            "teacher": {"model": "cnn4", "epochs": 1},
            "student": {"model": "cnn_small", "kwargs": {"width": 0.25}},
            "method": "kd", "epochs": 2, "search": {"num_samples": 3, "seed": 0},
            "scheduler": {"type": "none"}, "storage": str(tmp_path / "res"), **over}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    import ray

    import kdtune

    d = tmp_path_factory.mktemp("warm")
    result = kdtune.sweep(kdtune.load_spec(spec_file(d, "first")), log=lambda m: None)
    ray.shutdown()  # later tests expect no Ray in this process
    return d, result


def test_finished_trials_become_observations_before_any_new_trial(earlier):
    import kdtune
    from kdtune.tune._ray_compat import optuna_study
    from kdtune.tune.plan import plan_sweep
    from kdtune.tune.search import make_searcher

    d, first = earlier
    spec = kdtune.load_spec(spec_file(d, "second", search={"num_samples": 3, "seed": 1,
                                                            "warm_start": ["first"]}))
    assert plan_sweep(spec).warm == 3
    lines: list[str] = []
    study = optuna_study(make_searcher(spec, log=lines.append))
    warm = [t for t in study.trials if "warm_start" in t.user_attrs]
    assert len(warm) == 3 and all(t.state.name == "COMPLETE" for t in warm)
    assert sorted(t.value for t in warm) == sorted(t.value for t in first.trials)
    assert {t.user_attrs["warm_start"].split("/")[0] for t in warm} == {"first"}
    assert any("3 finished trial(s) of first" in line for line in lines)


def test_values_no_longer_searched_are_dropped_with_one_line(earlier):
    import kdtune
    from kdtune.tune._ray_compat import optuna_study
    from kdtune.tune.search import make_searcher

    d, _ = earlier
    spec = kdtune.load_spec(spec_file(d, "third", params={"temperature": 4.0},
                                      search={"num_samples": 3, "warm_start": ["first"]}))
    lines: list[str] = []
    warm = [t for t in optuna_study(make_searcher(spec, log=lines.append)).trials
            if "warm_start" in t.user_attrs]
    assert len(warm) == 3
    assert all("temperature" not in t.params and "lr" in t.params for t in warm)
    assert [line for line in lines if "dropped" in line] == [
        "warm start: dropped values no longer in the search space: temperature (3)"]


def test_unknown_sweep_or_other_metric_is_a_spec_error(earlier):
    import kdtune
    from kdtune.spec import SpecError
    from kdtune.tune.warm import observations

    d, _ = earlier
    with pytest.raises(SpecError, match="search.warm_start: no sweep 'nope'"):
        observations(kdtune.load_spec(spec_file(d, "x", search={"warm_start": ["nope"]})))
    with pytest.raises(SpecError, match="optimised max val_acc"):
        observations(kdtune.load_spec(spec_file(d, "y", metric="val_loss", mode="min",
                                                search={"warm_start": ["first"]})))
