"""The shipped Ray cluster configs and `litmus check-cluster` (offline: no cloud call, no Ray started)."""

from __future__ import annotations

import copy
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import yaml

from study.cli import main
from study.cluster_check import check_cluster, ray_schema, summarize_cluster

REPO = Path(__file__).resolve().parents[1]
AWS = REPO / "cluster.yaml"
GCP = REPO / "docs" / "cluster-gcp.yaml"
SHIPPED = [AWS, GCP]


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _write(tmp_path: Path, config: dict, name: str = "broken.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: the check must stay offline."""
    def refuse(*args, **kwargs):
        raise AssertionError("check-cluster tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# -- the shipped configs -------------------------------------------------------------------------
@pytest.mark.parametrize("path", SHIPPED, ids=["aws", "gcp"])
def test_shipped_config_passes_check_cluster(path):
    assert check_cluster(str(path), cwd=str(REPO)) == []


@pytest.mark.parametrize("path", SHIPPED, ids=["aws", "gcp"])
def test_shipped_config_passes_rays_own_schema_and_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(path)
    jsonschema.validate(config, ray_schema())  # raises on any violation
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    # Ray's merge keeps our per-type counts and puts the project install on head and workers alike.
    assert prepared["available_node_types"]["head"]["max_workers"] == 0
    assert any("pip install -q -e ~/mtl-litmus" in c for c in prepared["head_setup_commands"])
    assert any("pip install -q -e ~/mtl-litmus" in c for c in prepared["worker_setup_commands"])


@pytest.mark.parametrize("path", SHIPPED, ids=["aws", "gcp"])
def test_shipped_config_shape(path):
    config = _load(path)
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert types[head]["resources"] == {"CPU": 0}
    workers = {n: t for n, t in types.items() if n != head}
    assert all(t["min_workers"] == 0 for t in workers.values())  # scale from zero
    assert all(t["resources"]["GPU"] >= 1 for t in workers.values())
    assert config["file_mounts"] == {"~/mtl-litmus": "."}
    # one on-demand and one spot type, spot off until switched on
    assert workers["gpu_spot"]["max_workers"] == 0 and workers["gpu_ondemand"]["max_workers"] > 0
    # dashboard on the head's loopback only; no port opened to the internet
    assert all("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"] if "--head" in c)
    assert "security_group" not in config["provider"]


def test_aws_spot_type_uses_instance_market_options():
    nc = _load(AWS)["available_node_types"]["gpu_spot"]["node_config"]
    assert nc["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert "InstanceMarketOptions" not in _load(AWS)["available_node_types"]["gpu_ondemand"]["node_config"]


@pytest.mark.parametrize("path", SHIPPED, ids=["aws", "gcp"])
def test_shipped_config_holds_no_credentials(path):
    text = path.read_text()
    assert not re.search(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", text)
    assert "-----BEGIN" not in text
    assert not re.search(r"(?i)aws_secret_access_key|aws_session_token|password", text)
    config = _load(path)
    assert "gcp_credentials" not in config["provider"] and "ssh_private_key" not in config["auth"]


def test_summary_of_shipped_aws_config():
    summary = summarize_cluster(str(AWS))
    lines = summary.splitlines()
    assert lines[0] == f"{AWS}: Ray cluster 'mtl-litmus' on aws (us-west-2), up to 8 worker nodes"
    assert lines[1].split() == ["head", "head", "m5.xlarge:", "runs", "no", "trials", "(resources", '{"CPU":',
                                "0})"]
    assert "g5.2xlarge: 8 CPU, 1 GPU, on-demand, 0..8 nodes" in lines[2]
    assert "g5.2xlarge: 8 CPU, 1 GPU, spot, off (max_workers 0)" in lines[3]
    assert lines[4].startswith("  code    ~/mtl-litmus <- .")
    assert lines[5] == "  access  workers reach S3 through instance profile ray-autoscaler-v1"


# -- broken copies: one exact line each ----------------------------------------------------------
def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def _no_gpus(c):
    for name in ("gpu_ondemand", "gpu_spot"):
        c["available_node_types"][name]["resources"] = {"CPU": 8}


BROKEN_AWS = {
    "misspelt top-level key": (
        lambda c: _rename(c, "available_node_types", "availble_node_types"),
        ["availble_node_types: unknown key; did you mean 'available_node_types'?"]),
    "misspelt node-type key": (
        lambda c: _rename(c["available_node_types"]["gpu_ondemand"], "max_workers", "max_worker"),
        ["available_node_types.gpu_ondemand.max_worker: unknown key; did you mean 'max_workers'?"]),
    "misspelt node_config key": (
        lambda c: _rename(c["available_node_types"]["gpu_ondemand"]["node_config"], "InstanceType", "InstanceTyp"),
        ["available_node_types.gpu_ondemand.node_config.InstanceTyp: not an EC2 RunInstances parameter; "
         "did you mean 'InstanceType'?"]),
    "misspelt provider key": (
        lambda c: _rename(c["provider"], "region", "regoin"),
        ["provider.regoin: unknown provider key; did you mean 'region'?"]),
    "Ray 1 key": (
        lambda c: c.update(initial_workers=2),
        ["initial_workers: not a Ray 2 cluster setting; set min_workers per node type under "
         "available_node_types"]),
    "fractional GPU resource": (
        lambda c: c["available_node_types"]["gpu_ondemand"]["resources"].update(GPU=0.5),
        ["available_node_types.gpu_ondemand.resources.GPU: expected an integer, got 0.5"]),
    "max_workers not a number": (
        lambda c: c.update(max_workers="eight"),
        ["max_workers: expected an integer, got 'eight'"]),
    "missing cluster_name": (
        lambda c: c.pop("cluster_name"),
        ["cluster_name: missing; Ray requires it here"]),
    "worker without GPU": (
        _no_gpus,
        ["available_node_types: no worker type declares GPUs, so GPU trials have nowhere to run; give a worker "
         "type resources: {CPU: N, GPU: M} on a GPU machine (e.g. g5.2xlarge)"]),
    "GPU types all switched off": (
        lambda c: c["available_node_types"]["gpu_ondemand"].update(max_workers=0),
        ["available_node_types: every GPU worker type has max_workers: 0 (or max_workers is 0), so no GPU node "
         "can start; raise max_workers of one of gpu_ondemand, gpu_spot"]),
    "head with CPUs": (
        lambda c: c["available_node_types"]["head"].update(resources={"CPU": 4}),
        ["available_node_types.head.resources: head node advertises CPUs, so trials would run on it; "
         "set resources: {CPU: 0}"]),
    "head with auto-detected CPUs": (
        lambda c: c["available_node_types"]["head"].update(resources={}),
        ["available_node_types.head.resources: head node advertises CPUs, so trials would run on it; "
         "set resources: {CPU: 0}"]),
    "min_workers above max_workers": (
        lambda c: c["available_node_types"]["gpu_ondemand"].update(min_workers=3, max_workers=1),
        ["available_node_types.gpu_ondemand: min_workers (3) is greater than max_workers (1); "
         "set max_workers >= min_workers"]),
    "min_workers above the global cap": (
        lambda c: (c.update(max_workers=2), c["available_node_types"]["gpu_ondemand"].update(min_workers=3)),
        ["max_workers: 2 is less than the node types' min_workers together (3); raise max_workers or lower "
         "min_workers"]),
    "GPU resources on a CPU instance": (
        lambda c: c["available_node_types"]["gpu_ondemand"]["node_config"].update(InstanceType="m5.2xlarge"),
        ["available_node_types.gpu_ondemand.node_config.InstanceType: m5.2xlarge has no GPUs but resources "
         "declare GPU: 1; use a GPU instance type (g4dn, g5, g6, p3, p4d, p5), e.g. g5.2xlarge"]),
    "more GPUs than the instance has": (
        lambda c: c["available_node_types"]["gpu_ondemand"]["resources"].update(GPU=4),
        ["available_node_types.gpu_ondemand.node_config.InstanceType: g5.2xlarge has 1 GPU but resources "
         "declare GPU: 4; trials would fail to find them"]),
    "more CPUs than the instance has": (
        lambda c: c["available_node_types"]["gpu_ondemand"]["resources"].update(CPU=16),
        ["available_node_types.gpu_ondemand.node_config.InstanceType: g5.2xlarge has 8 vCPUs but resources "
         "declare CPU: 16"]),
    "setup does not install the project": (
        lambda c: c.update(setup_commands=[x for x in c["setup_commands"] if "mtl-litmus" not in x]),
        ['setup_commands: no command installs mtl-litmus on any node; add `pip install -e ~/mtl-litmus` to '
         'setup_commands (with file_mounts "~/mtl-litmus": ".")']),
    "no setup commands at all (Ray's defaults)": (
        lambda c: c.pop("setup_commands"),
        ['setup_commands: no command installs mtl-litmus on any node; add `pip install -e ~/mtl-litmus` to '
         'setup_commands (with file_mounts "~/mtl-litmus": ".")']),
    "a worker type's own setup list skips the install": (
        lambda c: c["available_node_types"]["gpu_spot"].update(worker_setup_commands=["nvidia-smi"]),
        ["available_node_types.gpu_spot.worker_setup_commands: no command installs mtl-litmus, and this list "
         "replaces setup_commands on gpu_spot nodes; add `pip install -e ~/mtl-litmus` to it"]),
    "file_mounts missing the code": (
        lambda c: c.pop("file_mounts"),
        ['file_mounts: nothing copies the code to ~/mtl-litmus, which the setup commands install from; add '
         '"~/mtl-litmus": "." and run ray up from the repository root']),
    "head_node_type misspelt": (
        lambda c: c.update(head_node_type="haed"),
        ["head_node_type: 'haed' is not a node type in available_node_types; did you mean 'head'?"]),
    "head start without autoscaling config": (
        lambda c: c.update(head_start_ray_commands=["ray stop", "ray start --head --port=6379"]),
        ["head_start_ray_commands: `ray start --head` lacks --autoscaling-config=~/ray_bootstrap_config.yaml, "
         "so no worker would ever start"]),
    "dashboard opened to the internet": (
        lambda c: c["provider"].update(security_group={"GroupName": "litmus", "IpPermissions": [
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
            {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}),
        ["provider.security_group.IpPermissions[1]: opens port 8265 (the Ray dashboard) to the internet; "
         "remove the rule and use `ray dashboard CLUSTER.yaml` (an SSH tunnel)"]),
    "unknown provider type": (
        lambda c: c["provider"].update(type="awz"),
        ["provider.type: Ray has no node provider 'awz'; valid: aliyun, aws, azure, fake_multinode, "
         "fake_multinode_docker, gcp, local, readonly, spark, vsphere"]),
}


@pytest.mark.parametrize("case", list(BROKEN_AWS))
def test_broken_aws_copy_gives_the_expected_line(tmp_path, case):
    mutate, expected = BROKEN_AWS[case]
    config = _load(AWS)
    mutate(config)
    assert check_cluster(_write(tmp_path, config), cwd=str(REPO)) == expected


def test_credentials_in_the_file_are_reported(tmp_path):
    config = _load(AWS)
    config["available_node_types"]["head"]["node_config"]["UserData"] = "export KEY=AKIAIOSFODNN7EXAMPLE"
    path = _write(tmp_path, config)
    line_no = next(i for i, line in enumerate(Path(path).read_text().splitlines(), 1) if "AKIA" in line)
    assert check_cluster(path, cwd=str(REPO)) == [
        f"{path}: line {line_no}: looks like an AWS access key id; keep credentials out of the cluster file "
        f"and use instance profiles / service accounts (docs/cluster.md)"]


def test_bad_yaml_reports_line_and_column(tmp_path):
    text = AWS.read_text().replace("  region: us-west-2\n", "  region: us-west-2\n    zone: a: b\n", 1)
    bad = tmp_path / "cluster.yaml"
    bad.write_text(text)
    line_no = text.splitlines().index("    zone: a: b") + 1
    problems = check_cluster(str(bad), cwd=str(REPO))
    assert len(problems) == 1
    assert re.fullmatch(rf"{re.escape(str(bad))}: line {line_no}, column \d+: invalid YAML: .+", problems[0])


def test_bad_yaml_exact_message(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("cluster_name: x\nprovider:\n  type: aws\n   region: us-west-2\n")
    assert check_cluster(str(bad)) == [f"{bad}: line 4, column 10: invalid YAML: mapping values are not allowed here"]


def test_duplicate_key_is_an_error(tmp_path):
    text = AWS.read_text().replace("max_workers: 8\n", "max_workers: 8\nmax_workers: 2\n", 1)
    bad = tmp_path / "dup.yaml"
    bad.write_text(text)
    line_no = text.splitlines().index("max_workers: 2") + 1
    assert check_cluster(str(bad), cwd=str(REPO)) == [
        f"{bad}: line {line_no}, column 1: invalid YAML: key 'max_workers' appears twice in one mapping"]


def test_not_a_mapping_and_missing_file(tmp_path):
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    assert check_cluster(str(lst)) == [
        f"{lst}: expected a mapping of Ray cluster settings (cluster_name, provider, ...), got a list"]
    assert check_cluster(str(tmp_path / "nope.yaml")) == [f"{tmp_path / 'nope.yaml'}: no such file"]


def test_relative_code_mount_is_checked_from_where_ray_up_runs(tmp_path):
    assert check_cluster(str(AWS), cwd=str(tmp_path)) == [
        f"file_mounts.~/mtl-litmus: local folder '.' ({tmp_path.resolve()}) is not an mtl-litmus checkout; "
        f"run this check and ray up from the repository root"]
    config = _load(AWS)
    config["file_mounts"] = {"~/mtl-litmus": str(REPO)}  # an absolute path works from anywhere
    assert check_cluster(_write(tmp_path, config), cwd=str(tmp_path)) == []


def test_project_installed_by_name_needs_no_mount(tmp_path):
    config = _load(AWS)
    config.pop("file_mounts")
    config["setup_commands"] = [c for c in config["setup_commands"] if "mtl-litmus" not in c] + [
        "pip install 'mtl-litmus @ git+https://github.com/example/mtl-litmus'"]
    assert check_cluster(_write(tmp_path, config), cwd=str(REPO)) == []


# -- GCP-specific checks ---------------------------------------------------------------------------
def test_gcp_gpu_worker_without_accelerators(tmp_path):
    config = _load(GCP)
    config["available_node_types"]["gpu_ondemand"]["node_config"].pop("guestAccelerators")
    assert check_cluster(_write(tmp_path, config), cwd=str(REPO)) == [
        "available_node_types.gpu_ondemand.node_config: resources declare GPU: 1 but the VM has no "
        "guestAccelerators; add guestAccelerators: [{acceleratorType: nvidia-tesla-t4, acceleratorCount: 1}]"]


def test_gcp_gpu_worker_must_terminate_on_host_maintenance(tmp_path):
    config = _load(GCP)
    config["available_node_types"]["gpu_ondemand"]["node_config"]["scheduling"] = {"automaticRestart": True}
    # Ray's own examples write scheduling as a list of one-key mappings; that form is read too
    config["available_node_types"]["gpu_spot"]["node_config"]["scheduling"] = [
        {"preemptible": True}, {"onHostMaintenance": "TERMINATE"}]
    assert check_cluster(_write(tmp_path, config), cwd=str(REPO)) == [
        "available_node_types.gpu_ondemand.node_config.scheduling: GPU VMs must set onHostMaintenance: TERMINATE "
        "(Compute Engine cannot live-migrate them)"]


def test_gcp_misspelt_node_config_field_and_credentials(tmp_path):
    config = _load(GCP)
    _rename(config["available_node_types"]["gpu_ondemand"]["node_config"], "machineType", "machinetype")
    config["provider"]["gcp_credentials"] = {"type": "credentials_token", "credentials": "x"}
    assert check_cluster(_write(tmp_path, config), cwd=str(REPO)) == [
        "provider.gcp_credentials: credentials in the cluster file; remove them and use "
        "`gcloud auth application-default login` and the nodes' service account",
        "available_node_types.gpu_ondemand.node_config.machinetype: not a Compute Engine instance field; "
        "did you mean 'machineType'?"]


def test_gcp_summary_names_spot_and_accelerators():
    lines = summarize_cluster(str(GCP)).splitlines()
    assert "n1-standard-8 + 1x nvidia-tesla-t4: 8 CPU, 1 GPU, on-demand, 0..8 nodes" in lines[2]
    assert "n1-standard-8 + 1x nvidia-tesla-t4: 8 CPU, 1 GPU, spot, off (max_workers 0)" in lines[3]


# -- the command line ------------------------------------------------------------------------------
def test_cli_check_cluster_ok_prints_summary(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["check-cluster", "cluster.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cluster.yaml: Ray cluster 'mtl-litmus' on aws")
    assert out.rstrip().endswith("no problems found; start it with: ray up cluster.yaml")


def test_cli_check_cluster_errors_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    config = _load(AWS)
    config["available_node_types"]["head"]["resources"] = {"CPU": 4}
    _rename(config["available_node_types"]["gpu_spot"], "min_workers", "min_worker")
    path = _write(tmp_path, config)
    assert main(["check-cluster", path]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    # schema problems come first and alone: the domain checks need a well-formed config
    assert captured.err.splitlines() == [
        "litmus: error: available_node_types.gpu_spot.min_worker: unknown key; did you mean 'min_workers'?"]


def test_a_study_spec_given_as_cluster_config_says_each_problem_once():
    lines = check_cluster(str(REPO / "search_spaces" / "demo.yaml"))
    assert lines[:2] == ["cluster_name: missing; Ray requires it here", "provider: missing; Ray requires it here"]
    assert len(lines) == len(set(lines)) and "methods: unknown key; not a Ray cluster setting" in lines
