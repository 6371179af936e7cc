"""Safety: local Ray without a dashboard (or with one on localhost), safe YAML, explicit user imports only."""

from __future__ import annotations

import re

import pytest

from study import driver
from study.errors import SpecError
from study.spec import parse_spec, read_yaml


def test_local_ray_listens_on_localhost_without_dashboard(monkeypatch):
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(driver, "check_address", lambda address: None)  # no cluster to reach here
    driver.init_ray(None, num_cpus=2)
    kw = calls[-1]
    assert kw["address"] == "local" and kw["include_dashboard"] is False
    # no _node_ip_address: Ray turns 127.0.0.1 into the host's address anyway, so it would only look safe
    assert "_node_ip_address" not in kw and kw["dashboard_host"] == "127.0.0.1"
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


# -- static checks over the repository -------------------------------------------------------------
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
CODE_DIRS = ("study", "analysis", "benchmarks")
#: (file, call) pairs that deliberately unpickle: Ray Tune's own experiment/searcher state on --resume,
#: which the README's security notes say to restore only from trusted storage
TRUSTED_UNPICKLE = {("study/driver.py", "ray.cloudpickle.loads"), ("study/search.py", "ray.cloudpickle.load")}


def _calls(path):
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def _python_files():
    for d in CODE_DIRS:
        yield from sorted((REPO / d).rglob("*.py"))


def test_every_torch_load_refuses_pickled_code_and_yaml_is_never_loaded_unsafely():
    import ast

    torch_loads = 0
    for path in _python_files():
        rel = str(path.relative_to(REPO))
        for func, node in _calls(path):
            kw = {k.arg: k.value for k in node.keywords}
            if func == "torch.load":
                torch_loads += 1
                flag = kw.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, f"{rel}:{node.lineno}: torch.load without weights_only=True"
            if func in ("yaml.load", "yaml.load_all"):
                loader = ast.unparse(kw["Loader"]) if "Loader" in kw else ""
                assert loader in ("yaml.SafeLoader", "yaml.CSafeLoader", "_UniqueKeyLoader"), f"{rel}:{node.lineno}: {func} with {loader or 'no'} Loader"
            assert func not in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all"), f"{rel}:{node.lineno}: {func}"
            if func.endswith(("pickle.load", "pickle.loads")):
                assert (rel, func) in TRUSTED_UNPICKLE, f"{rel}:{node.lineno}: {func} on untrusted data"
    assert torch_loads >= 3  # checkpoints (driver), pretrained weights (encoders), token caches (_xtreme)
    from study.cluster_check import _UniqueKeyLoader

    import yaml

    assert issubclass(_UniqueKeyLoader, yaml.SafeLoader)


def test_user_code_is_imported_only_from_an_explicit_module_class_reference(monkeypatch):
    """The only dynamic import of a spec-named module is the registry's `module:Class` path; a plain
    name never imports anything."""
    import importlib

    from study.weighting import WEIGHTINGS

    imported = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real(name, *a))
    with pytest.raises(SpecError):
        WEIGHTINGS.get("os", "methods[0]")
    assert imported == []
    WEIGHTINGS.get("tests.faults:NaNAfter", "methods[0]")
    assert imported == ["tests.faults"]
    dynamic = [(str(p.relative_to(REPO)), n.lineno) for p in _python_files() for f, n in _calls(p)
               if f in ("importlib.import_module", "__import__")]
    assert {p for p, _ in dynamic} <= {"study/registry.py"}, dynamic


def test_no_credentials_anywhere_in_the_repository():
    import subprocess

    from study.cluster_check import _CREDENTIAL_PATTERNS

    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    files = [REPO / f.decode() for f in files if f]
    assert len(files) > 50
    hits = []
    for path in files:
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for pattern, what in _CREDENTIAL_PATTERNS:
            for m in pattern.finditer(text):
                if path.name in ("cluster_check.py", "test_cluster.py", "test_safety.py") or "docs" in path.parts:
                    # the checker's own patterns, its tests' fake keys, and docs that *name* the variables
                    if not re.fullmatch(r"(?:AKIA|ASIA)[0-9A-Z]{16}", m.group()) or "EXAMPLE" in m.group():
                        continue
                hits.append(f"{path.relative_to(REPO)}: {what}")
    assert hits == []
    # the patterns do catch what they are for
    fake = "aws_access_key_id = AKIA" + "ABCDEFGHIJKLMNOP\n-----BEGIN RSA PRIVATE" + " KEY-----"
    assert [w for p, w in _CREDENTIAL_PATTERNS if p.search(fake)] == ["an AWS access key id", "a private key"]


def test_docs_say_how_to_keep_the_dashboard_private_and_cluster_yaml_uses_roles():
    readme = (REPO / "README.md").read_text()
    assert "starts no dashboard unless `--dashboard` is given, and then binds\nit to 127.0.0.1" in readme
    assert "listen on every interface" in readme and "firewall" in readme  # no false claim of a loopback-only Ray
    assert "keeps the dashboard private" in readme and "docs/cluster.md" in readme
    guide = (REPO / "docs" / "cluster.md").read_text()
    assert "## Keep the dashboard private" in guide and "ray dashboard cluster.yaml" in guide
    cluster = (REPO / "cluster.yaml").read_text()
    assert "--dashboard-host=127.0.0.1" in cluster and "instance profile" in cluster


def test_litmus_problems_lists_parameters_train_defaults_and_resources(capsys):
    from study.cli import main
    from study.problems import PROBLEMS

    assert main(["problems"]) == 0
    out = capsys.readouterr().out
    cls = PROBLEMS.get("office31")
    assert "params: root=None" in out and f"lr={cls.defaults['lr']!r}" in out
    assert f"resources per trial: {', '.join(f'{k}={v}' for k, v in cls.resources.items())}" in out
    assert out.count("resources per trial:") == len(PROBLEMS.names())


def test_litmus_methods_lists_the_presets(capsys):
    from study.cli import main
    from study.weighting.method import PRESETS

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "MGDA-UB = aggregator: {'name': 'mgda', 'level': 'representation'}" in out
    assert all(f"\n  {name:<16} " in out for name in PRESETS)
