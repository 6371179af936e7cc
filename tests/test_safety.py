"""Safety: local Ray bound to localhost without a dashboard, safe YAML, explicit user imports only."""

from __future__ import annotations

import pytest

from study import driver
from study.errors import SpecError
from study.spec import parse_spec, read_yaml


def test_local_ray_listens_on_localhost_without_dashboard(monkeypatch):
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    driver.init_ray(None, num_cpus=2)
    kw = calls[-1]
    assert kw["address"] == "local" and kw["include_dashboard"] is False
    assert kw["_node_ip_address"] == "127.0.0.1" and kw["dashboard_host"] == "127.0.0.1"
    driver.init_ray(None, dashboard=True)
    assert calls[-1]["include_dashboard"] is True and calls[-1]["dashboard_host"] == "127.0.0.1"
    driver.init_ray("ray://head:10001")
    assert calls[-1]["address"] == "ray://head:10001" and "include_dashboard" not in calls[-1]


def test_yaml_is_read_with_the_safe_loader(tmp_path):
    spec = tmp_path / "evil.yaml"
    spec.write_text("name: !!python/object/apply:os.system ['touch pwned']\nmethods: [ew]\n")
    with pytest.raises(SpecError, match="YAML"):
        read_yaml(spec)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("ref, message", [
    ("os:system", "is neither a LossWeighting nor a GradAggregator subclass"),
    ("no_such_module_xyz:Thing", "cannot import module 'no_such_module_xyz'"),
    ("study.weighting.loss:Nope", "module 'study.weighting.loss' has no attribute 'Nope'"),
])
def test_user_methods_come_only_from_an_explicit_module_class(ref, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({"problem": "multidigits", "methods": [{"name": ref}]})


def test_a_user_method_class_runs_from_its_module_path():
    spec = parse_spec({"problem": {"name": "multidigits", "n_train": 64, "n_val": 32, "n_test": 32},
                       "methods": [{"name": "tests.faults:NaNAfter", "steps": 1000}]})
    m = spec.methods[0]
    assert m["weighting"] == {"name": "tests.faults:NaNAfter", "steps": 1000} and m["label"] == "NaNAfter(steps=1000)"


def test_rows_of_different_studies_never_mix(tmp_path):
    from study.results import StudyWriter
    from tests.conftest import tiny_trial_config

    cfg = tiny_trial_config("ew")
    cfg["study"], cfg["spec_hash"] = "a", "h1"
    w = StudyWriter(str(tmp_path / "a"))
    w.add_result("t", cfg, {"epoch": 1, "val/left/accuracy": 0.5})
    import pyarrow.parquet as pq

    row = pq.read_table(tmp_path / "a" / "results" / "part-t.parquet").to_pylist()[0]
    assert (row["study"], row["spec_hash"]) == ("a", "h1")
