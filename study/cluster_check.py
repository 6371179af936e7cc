"""``litmus check-cluster``: check a Ray autoscaler config offline, before ``ray up`` spends money.

Three layers, each reported as one line per problem (an empty list means the config is fine):

1. YAML syntax (with the line and column) and duplicate keys, which PyYAML would silently merge.
2. Ray's own JSON schema (``ray/autoscaler/ray-schema.json`` of the installed Ray), each violation
   rendered with the dotted key path, and a did-you-mean for misspelt keys. If the schema passes, Ray's
   own offline preparation and validation (``prepare_config`` + ``validate_config``: defaults merge,
   per-type worker counts) run too; neither calls a cloud API.
3. What a litmus study needs from a cluster: a head that runs no trials, a worker type with GPUs on a
   GPU machine, sane worker counts, setup commands that install this project from a copied checkout,
   no credentials in the file, and no dashboard port opened to the internet.

Nothing here imports boto3 or a Google client, or opens a network connection.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import json
import logging
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

PROJECT = "mtl-litmus"

# Top-level keys of Ray 1.x configs that Ray 2 no longer accepts, with what to do instead.
LEGACY_KEYS = {
    "min_workers": "set min_workers per node type under available_node_types",
    "initial_workers": "set min_workers per node type under available_node_types",
    "target_utilization_fraction": "use upscaling_speed",
    "autoscaling_mode": "use upscaling_speed",
    "head_node": "use available_node_types with head_node_type",
    "worker_nodes": "use available_node_types",
}

# Parameters of EC2 RunInstances (boto3 ``create_instances``): the keys an AWS node_config may hold.
# Only near misses of these are reported, so a valid parameter missing here is never an error.
AWS_NODE_CONFIG_KEYS = (
    "BlockDeviceMappings", "ImageId", "InstanceType", "Ipv6AddressCount", "Ipv6Addresses", "KernelId",
    "KeyName", "MaxCount", "MinCount", "Monitoring", "Placement", "RamdiskId", "SecurityGroupIds",
    "SecurityGroups", "SubnetId", "SubnetIds", "UserData", "AdditionalInfo", "ClientToken",
    "DisableApiTermination", "DisableApiStop", "EbsOptimized", "IamInstanceProfile",
    "InstanceInitiatedShutdownBehavior", "NetworkInterfaces", "PrivateIpAddress",
    "ElasticGpuSpecification", "ElasticInferenceAccelerators", "TagSpecifications", "LaunchTemplate",
    "InstanceMarketOptions", "CreditSpecification", "CpuOptions", "CapacityReservationSpecification",
    "HibernationOptions", "LicenseSpecifications", "MetadataOptions", "EnclaveOptions",
    "PrivateDnsNameOptions", "MaintenanceOptions", "EnablePrimaryIpv6", "NetworkPerformanceOptions",
)
# Fields of a Compute Engine instance (instances.insert body), plus Ray's TPU node fields.
GCP_NODE_CONFIG_KEYS = (
    "machineType", "disks", "guestAccelerators", "scheduling", "serviceAccounts", "metadata",
    "networkInterfaces", "labels", "tags", "minCpuPlatform", "shieldedInstanceConfig",
    "confidentialInstanceConfig", "reservationAffinity", "advancedMachineFeatures", "canIpForward",
    "deletionProtection", "description", "displayDevice", "hostname", "resourcePolicies", "params",
    "networkPerformanceConfig", "privateIpv6GoogleAccess", "sourceMachineImage",
    "instanceEncryptionKey", "keyRevocationActionType", "acceleratorType", "acceleratorConfig",
    "runtimeVersion", "networkConfig", "schedulingConfig",
)
# provider keys Ray's providers read beyond those the schema lists (the schema allows any key there).
EXTRA_PROVIDER_KEYS = ("use_external_head_ip", "security_group", "disable_launch_config_check",
                       "head_node_cloudwatch_agent", "prefer_spot_node")

# (vCPUs, GPUs) of common AWS GPU instance types, to catch resources a node cannot provide.
AWS_GPU_SHAPES: dict[str, tuple[int, int]] = {
    **{f"g4dn.{s}": (c, g) for s, c, g in [("xlarge", 4, 1), ("2xlarge", 8, 1), ("4xlarge", 16, 1),
                                           ("8xlarge", 32, 1), ("16xlarge", 64, 1), ("12xlarge", 48, 4),
                                           ("metal", 96, 8)]},
    **{f"{fam}.{s}": (c, g) for fam in ("g5", "g6") for s, c, g in [
        ("xlarge", 4, 1), ("2xlarge", 8, 1), ("4xlarge", 16, 1), ("8xlarge", 32, 1), ("16xlarge", 64, 1),
        ("12xlarge", 48, 4), ("24xlarge", 96, 4), ("48xlarge", 192, 8)]},
    "p3.2xlarge": (8, 1), "p3.8xlarge": (32, 4), "p3.16xlarge": (64, 8), "p3dn.24xlarge": (96, 8),
    "p4d.24xlarge": (96, 8), "p5.48xlarge": (192, 8),
}
# Compute Engine machine families that come with GPUs attached (no guestAccelerators needed).
GCP_GPU_MACHINE_PREFIXES = ("a2-", "a3-", "a4-", "g2-", "g4-")

# Ports that must never face the internet: dashboard, GCS, Ray client.
PRIVATE_PORTS = {8265: "the Ray dashboard", 6379: "Ray's GCS", 10001: "the Ray client server"}

_CREDENTIAL_PATTERNS = (
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"(?i)aws_secret_access_key|aws_session_token"), "an AWS secret"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r'"type"\s*:\s*"service_account"'), "a GCP service-account key"),
)

INSTALL_HINT = "pip install -e ~/mtl-litmus"


# -- loading -----------------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load(path: str) -> tuple[dict | None, list[str]]:
    p = Path(path)
    if not p.is_file():
        return None, [f"{path}: no such file"]
    try:
        config = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return None, [f"{path}: {where}invalid YAML: {exc.problem or exc.context}"]
    except yaml.YAMLError as exc:
        return None, [f"{path}: invalid YAML: {' '.join(str(exc).split())}"]
    if not isinstance(config, dict):
        return None, [f"{path}: expected a mapping of Ray cluster settings (cluster_name, provider, ...), "
                      f"got {_kind(config)}"]
    return config, []


@lru_cache(maxsize=1)
def ray_schema() -> dict:
    """Ray's autoscaler JSON schema, read from the installed Ray without importing it."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("Ray is not installed; install mtl-litmus with its dependencies")
    schema_path = Path(list(spec.submodule_search_locations)[0]) / "autoscaler" / "ray-schema.json"
    return json.loads(schema_path.read_text())


# -- rendering helpers -------------------------------------------------------------------------
def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
               "object": "a mapping", "array": "a list", "null": "null"}


def _key_path(parts) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _did_you_mean(key: str, choices, cutoff: float = 0.6) -> str | None:
    match = difflib.get_close_matches(str(key), list(choices), n=1, cutoff=cutoff)
    return match[0] if match else None


def _unknown_key_line(path: str, key: str, allowed: list[str], legacy: bool = False) -> str:
    if legacy and key in LEGACY_KEYS:
        return f"{path}: not a Ray 2 cluster setting; {LEGACY_KEYS[key]}"
    guess = _did_you_mean(key, allowed)
    if guess:
        return f"{path}: unknown key; did you mean '{guess}'?"
    if len(allowed) <= 10:
        return f"{path}: unknown key; valid keys: {', '.join(allowed)}"
    return f"{path}: unknown key; not a Ray cluster setting"


# -- layer 2: Ray's schema ---------------------------------------------------------------------
def _schema_problems(config: dict) -> list[str]:
    import jsonschema

    schema = ray_schema()
    validator = jsonschema.Draft7Validator(schema)
    lines: list[str] = []
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    for err in errors:
        parts = list(err.absolute_path)
        path = _key_path(parts)
        if err.validator == "additionalProperties":
            allowed = list(err.schema.get("properties", {}))
            patterns = list(err.schema.get("patternProperties", {}))
            for key in err.instance:
                if key in allowed or any(re.search(p, key) for p in patterns):
                    continue
                lines.append(_unknown_key_line(_key_path([*parts, key]), key, allowed, legacy=not parts))
        elif err.validator == "required":
            missing = [k for k in err.validator_value if k not in err.instance]
            for key in missing:
                lines.append(f"{_key_path([*parts, key])}: missing; Ray requires it here")
        elif err.validator == "type":
            want = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
            words = " or ".join(_TYPE_WORDS.get(w, w) for w in want)
            lines.append(f"{path or '(top level)'}: expected {words}, got {_kind(err.instance)}")
        elif err.validator == "minimum":
            lines.append(f"{path}: must be >= {err.validator_value}, got {_kind(err.instance)}")
        elif err.validator == "enum":
            lines.append(f"{path}: must be one of {', '.join(map(str, err.validator_value))}, "
                         f"got {_kind(err.instance)}")
        else:
            lines.append(f"{path or '(top level)'}: {' '.join(err.message.split())}")
    return lines


def _near_miss_keys(mapping: Any, path: str, known, what: str) -> list[str]:
    """Keys of a free-form mapping (node_config, provider) that look like typos of known keys."""
    if not isinstance(mapping, dict):
        return []
    lines = []
    for key in mapping:
        if key in known:
            continue
        guess = _did_you_mean(key, known, cutoff=0.8)
        if guess:
            lines.append(f"{path}.{key}: {what}; did you mean '{guess}'?")
    return lines


# -- layer 3: what a study needs -----------------------------------------------------------------
def _defaults(provider_type: str) -> dict:
    """Ray's defaults.yaml for a provider (what `ray up` merges under the config), or {}."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return {}
    base = Path(list(spec.submodule_search_locations)[0]) / "autoscaler" / provider_type / "defaults.yaml"
    try:
        return yaml.safe_load(base.read_text()) or {}
    except OSError:
        return {}


def _gpus(node_type: dict) -> float:
    res = node_type.get("resources") or {}
    return res.get("GPU", 0) or 0


def _gcp_scheduling(node_config: dict) -> dict:
    """GCP ``scheduling`` as one mapping (Ray's examples also write it as a list of one-key mappings)."""
    sched = node_config.get("scheduling") or {}
    if isinstance(sched, list):
        merged: dict = {}
        for item in sched:
            if isinstance(item, dict):
                merged.update(item)
        return merged
    return sched if isinstance(sched, dict) else {}


def _is_spot(provider_type: str, node_config: dict) -> bool:
    if provider_type == "aws":
        market = node_config.get("InstanceMarketOptions") or {}
        return isinstance(market, dict) and str(market.get("MarketType", "")).lower() == "spot"
    if provider_type == "gcp":
        sched = _gcp_scheduling(node_config)
        return bool(sched.get("preemptible")) or str(sched.get("provisioningModel", "")).upper() == "SPOT"
    return False


def _norm_remote(path: str) -> str:
    path = str(path).strip().rstrip("/")
    for prefix in ("$HOME/", "${HOME}/"):
        if path.startswith(prefix):
            path = "~/" + path[len(prefix):]
    return path


def _installs_project(commands: list[str], mounts: dict) -> tuple[bool, str | None]:
    """(installs?, remote path it installs from): a pip install of a mounted folder or of the package."""
    remotes = {_norm_remote(r) for r in mounts}
    for cmd in commands:
        if not isinstance(cmd, str) or not re.search(r"\bpip3?\b.*\binstall\b", cmd):
            continue
        tokens = [_norm_remote(re.sub(r"\[[^\]]*\]$", "", t.strip("'\""))) for t in cmd.split()]
        for tok in tokens:
            if tok in remotes:
                return True, tok
        if re.search(r"\bmtl[-_]litmus\b", cmd):
            # by name (a git URL, an index) or from a path ending in mtl-litmus that no mount fills
            path_tok = next((t for t in tokens if t.endswith(("mtl-litmus", "mtl_litmus"))
                             and t.startswith(("~", "/", "./", "../")) and "://" not in t), None)
            return True, path_tok
    return False, None


def _effective_setup(config: dict, defaults: dict, type_name: str, is_head: bool) -> list[str]:
    """The setup commands `ray up` runs on a node of this type (Ray's merge rules)."""
    def get(key):
        return config[key] if key in config else defaults.get(key, [])

    node_type = config["available_node_types"][type_name]
    init = list(node_type.get("initialization_commands") or get("initialization_commands") or [])
    if is_head:
        return init + list(get("setup_commands") or []) + list(get("head_setup_commands") or [])
    if "worker_setup_commands" in node_type:
        return init + list(node_type.get("worker_setup_commands") or [])
    return init + list(get("setup_commands") or []) + list(get("worker_setup_commands") or [])


def _is_checkout(folder: Path) -> bool:
    try:
        text = (folder / "pyproject.toml").read_text()
    except OSError:
        return False
    return bool(re.search(r'^\s*name\s*=\s*["\']mtl[-_]litmus["\']', text, re.M))


def _domain_problems(config: dict, path: str, cwd: str) -> list[str]:
    lines: list[str] = []
    provider = config.get("provider") or {}
    ptype = str(provider.get("type", ""))
    defaults = _defaults(ptype)

    lines += _near_miss_keys(provider, "provider",
                             [*ray_schema()["properties"]["provider"]["properties"], *EXTRA_PROVIDER_KEYS],
                             "unknown provider key")

    types = config.get("available_node_types")
    if not isinstance(types, dict) or not types:
        return lines + ["available_node_types: missing; define a CPU head type and GPU worker types "
                        "(see cluster.yaml)"]
    head = config.get("head_node_type")
    if head is None:
        return lines + ["head_node_type: missing; name the head's entry of available_node_types"]
    if head not in types:
        guess = _did_you_mean(head, types)
        return lines + [f"head_node_type: {head!r} is not a node type in available_node_types"
                        + (f"; did you mean '{guess}'?" if guess else f" ({', '.join(types)})")]

    node_keys = AWS_NODE_CONFIG_KEYS if ptype == "aws" else GCP_NODE_CONFIG_KEYS if ptype == "gcp" else ()
    what = {"aws": "not an EC2 RunInstances parameter", "gcp": "not a Compute Engine instance field"}.get(ptype)
    for name, nt in types.items():
        if node_keys:
            lines += _near_miss_keys(nt.get("node_config"), f"available_node_types.{name}.node_config",
                                     node_keys, what)

    # The head advertises no CPUs (and no GPUs), so Ray never places a trial on it.
    head_res = types[head].get("resources") or {}
    if head_res.get("CPU", None) != 0:
        lines.append(f"available_node_types.{head}.resources: head node advertises CPUs, so trials would "
                     f"run on it; set resources: {{CPU: 0}}")
    elif head_res.get("GPU", 0):
        lines.append(f"available_node_types.{head}.resources: head node advertises GPUs, so trials would "
                     f"run on it; set resources: {{CPU: 0}} and use a CPU instance")

    global_max = config.get("max_workers", defaults.get("max_workers", 2))
    workers = {n: t for n, t in types.items() if n != head}
    for name, nt in workers.items():
        lo, hi = nt.get("min_workers", 0), nt.get("max_workers", global_max)
        if lo > hi:
            lines.append(f"available_node_types.{name}: min_workers ({lo}) is greater than max_workers ({hi}); "
                         f"set max_workers >= min_workers")
    sum_min = sum(t.get("min_workers", 0) for t in workers.values())
    if sum_min > global_max:
        lines.append(f"max_workers: {global_max} is less than the node types' min_workers together ({sum_min}); "
                     f"raise max_workers or lower min_workers")

    # GPU workers: declared explicitly (checkable offline) on a machine that has them.
    gpu_types = [n for n, t in workers.items() if _gpus(t) > 0]
    if not gpu_types:
        lines.append("available_node_types: no worker type declares GPUs, so GPU trials have nowhere to run; "
                     "give a worker type resources: {CPU: N, GPU: M} on a GPU machine (e.g. g5.2xlarge)")
    elif global_max == 0 or all(workers[n].get("max_workers", global_max) == 0 for n in gpu_types):
        lines.append("available_node_types: every GPU worker type has max_workers: 0 (or max_workers is 0), "
                     "so no GPU node can start; raise max_workers of one of "
                     + ", ".join(gpu_types))
    for name, nt in workers.items():
        lines += _gpu_machine_problems(ptype, name, nt)

    # The code: copied by file_mounts and installed by the setup commands of every node type.
    mounts = config.get("file_mounts") or {}
    installed_from: set[str] = set()
    missing: list[str] = []
    for name in types:
        ok, remote = _installs_project(_effective_setup(config, defaults, name, name == head), mounts)
        if not ok:
            missing.append(name)
        elif remote is not None:
            installed_from.add(remote)
    lines += _install_lines(missing, types, head)
    mounted = {_norm_remote(r): local for r, local in mounts.items()}
    for remote in sorted(installed_from):
        if remote not in mounted:
            lines.append(f"file_mounts: nothing copies the code to {remote}, which the setup commands install "
                         f"from; add \"{remote}\": \".\" and run ray up from the repository root")
            continue
        local = Path(os.path.expanduser(str(mounted[remote])))
        resolved = local if local.is_absolute() else Path(cwd) / local
        if not resolved.is_dir():
            lines.append(f"file_mounts.{remote}: local folder {str(mounted[remote])!r} does not exist here "
                         f"({resolved}); run this check and ray up from the repository root")
        elif not _is_checkout(resolved):
            lines.append(f"file_mounts.{remote}: local folder {str(mounted[remote])!r} ({resolved.resolve()}) "
                         f"is not an {PROJECT} checkout; run this check and ray up from the repository root")

    # Autoscaling needs the head's Ray to know the cluster config.
    starts = config.get("head_start_ray_commands")
    if starts is not None and not any("--autoscaling-config" in str(c) for c in starts):
        lines.append("head_start_ray_commands: `ray start --head` lacks "
                     "--autoscaling-config=~/ray_bootstrap_config.yaml, so no worker would ever start")

    lines += _exposed_ports(provider)
    return lines


def _install_lines(missing: list[str], types: dict, head: str) -> list[str]:
    """One line per setup-command list that fails to install the project on some node type."""
    if not missing:
        return []
    add = f"add `{INSTALL_HINT}` to setup_commands (with file_mounts \"~/mtl-litmus\": \".\")"
    own = [n for n in missing if n != head and "worker_setup_commands" in types[n]]
    shared = [n for n in missing if n not in own]
    lines = []
    if shared and len(shared) == len([n for n in types if n == head or "worker_setup_commands" not in types[n]]):
        lines.append(f"setup_commands: no command installs {PROJECT} on any node; {add}")
    elif shared:
        if head in shared:
            lines.append(f"head_setup_commands: no command installs {PROJECT} on the head node; {add}")
        workers = [n for n in shared if n != head]
        if workers:
            lines.append(f"worker_setup_commands: no command installs {PROJECT} on {', '.join(workers)} "
                         f"nodes; {add}")
    for name in own:
        lines.append(f"available_node_types.{name}.worker_setup_commands: no command installs {PROJECT}, and "
                     f"this list replaces setup_commands on {name} nodes; add `{INSTALL_HINT}` to it")
    return lines


def _gpu_machine_problems(ptype: str, name: str, nt: dict) -> list[str]:
    gpus = _gpus(nt)
    cpus = (nt.get("resources") or {}).get("CPU")
    nc = nt.get("node_config") or {}
    key = f"available_node_types.{name}.node_config"
    if ptype == "aws":
        itype = nc.get("InstanceType")
        if itype is None:
            if "LaunchTemplate" in nc or any(_did_you_mean(k, ["InstanceType"], 0.8) for k in nc):
                return []  # a launch template names it, or a typo of it is reported already
            return [f"{key}: no InstanceType; set one, e.g. InstanceType: g5.2xlarge"]
        family = str(itype).split(".")[0]
        if gpus > 0 and not family.startswith(("p", "g")):
            return [f"{key}.InstanceType: {itype} has no GPUs but resources declare GPU: {gpus}; "
                    f"use a GPU instance type (g4dn, g5, g6, p3, p4d, p5), e.g. g5.2xlarge"]
        shape = AWS_GPU_SHAPES.get(str(itype))
        out = []
        if shape and gpus > shape[1]:
            out.append(f"{key}.InstanceType: {itype} has {shape[1]} GPU{'s' * (shape[1] > 1)} but resources "
                       f"declare GPU: {gpus}; trials would fail to find them")
        if shape and isinstance(cpus, int) and cpus > shape[0]:
            out.append(f"{key}.InstanceType: {itype} has {shape[0]} vCPUs but resources declare CPU: {cpus}")
        return out
    if ptype == "gcp":
        accels = nc.get("guestAccelerators") or []
        count = sum(int(a.get("acceleratorCount", 1)) for a in accels if isinstance(a, dict))
        builtin = str(nc.get("machineType", "")).split("/")[-1].startswith(GCP_GPU_MACHINE_PREFIXES)
        out = []
        if gpus > 0 and not accels and not builtin:
            out.append(f"{key}: resources declare GPU: {gpus} but the VM has no guestAccelerators; add "
                       f"guestAccelerators: [{{acceleratorType: nvidia-tesla-t4, acceleratorCount: {int(gpus)}}}]")
        elif accels and gpus > count:
            out.append(f"{key}.guestAccelerators: {count} GPU{'s' * (count > 1)} attached but resources "
                       f"declare GPU: {gpus}")
        if accels or builtin:
            sched = _gcp_scheduling(nc)
            if str(sched.get("onHostMaintenance", "")).upper() != "TERMINATE":
                out.append(f"{key}.scheduling: GPU VMs must set onHostMaintenance: TERMINATE "
                           f"(Compute Engine cannot live-migrate them)")
        return out
    return []


def _exposed_ports(provider: dict) -> list[str]:
    group = provider.get("security_group") or {}
    rules = group.get("IpPermissions") or [] if isinstance(group, dict) else []
    lines = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        cidrs = [r.get("CidrIp") for r in rule.get("IpRanges") or [] if isinstance(r, dict)]
        cidrs += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges") or [] if isinstance(r, dict)]
        if not any(c in ("0.0.0.0/0", "::/0") for c in cidrs):
            continue
        if str(rule.get("IpProtocol", "")) == "-1":
            exposed = sorted(PRIVATE_PORTS)
        else:
            lo, hi = rule.get("FromPort"), rule.get("ToPort", rule.get("FromPort"))
            if not isinstance(lo, int) or not isinstance(hi, int):
                continue
            exposed = [p for p in sorted(PRIVATE_PORTS) if lo <= p <= hi]
        for port in exposed:
            lines.append(f"provider.security_group.IpPermissions[{i}]: opens port {port} ({PRIVATE_PORTS[port]}) "
                         f"to the internet; remove the rule and use `ray dashboard CLUSTER.yaml` (an SSH tunnel)")
    return lines


def _credential_problems(path: str, config: dict) -> list[str]:
    lines = []
    if isinstance(config.get("provider"), dict) and "gcp_credentials" in config["provider"]:
        lines.append("provider.gcp_credentials: credentials in the cluster file; remove them and use "
                     "`gcloud auth application-default login` and the nodes' service account")
    text = Path(path).read_text()
    for pattern, what in _CREDENTIAL_PATTERNS:
        match = pattern.search(text)
        if match:
            line_no = text.count("\n", 0, match.start()) + 1
            lines.append(f"{path}: line {line_no}: looks like {what}; keep credentials out of the cluster file "
                         f"and use instance profiles / service accounts (docs/cluster.md)")
    return lines


def _ray_problems(config: dict) -> list[str]:
    """Ray's own offline preparation and validation, as `ray up` runs them before any cloud call."""
    ptype = str((config.get("provider") or {}).get("type", ""))
    util_logger = logging.getLogger("ray.autoscaler._private.util")
    level = util_logger.level
    util_logger.setLevel(logging.WARNING)
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config

        validate_config(prepare_config(copy.deepcopy(config)))
    except NotImplementedError:
        from ray.autoscaler._private.providers import _DEFAULT_CONFIGS

        return [f"provider.type: Ray has no node provider {ptype!r}; valid: {', '.join(sorted(_DEFAULT_CONFIGS))}"]
    except Exception as exc:  # Ray raises ValueError/AssertionError/jsonschema errors with plain messages
        return [f"Ray rejects the config: {' '.join(str(exc).split())}"]
    finally:
        util_logger.setLevel(level)
    return []


# -- API ---------------------------------------------------------------------------------------------
def check_cluster(path: str, *, cwd: str | None = None) -> list[str]:
    """Problems of the Ray cluster config at ``path``, one line each; ``[]`` when it is ready for ``ray up``.

    ``cwd`` is the folder ``ray up`` will run from (relative file_mounts resolve against it; default:
    the current folder). No cloud API is called.
    """
    config, lines = _load(path)
    if config is None:
        return lines
    lines = _credential_problems(path, config)
    schema_lines = _schema_problems(config)
    if schema_lines:  # later checks read the structure the schema guarantees
        return list(dict.fromkeys(lines + schema_lines))  # a problem once, even if the schema finds it twice
    lines += _domain_problems(config, path, cwd or os.getcwd())
    if not lines:
        lines += _ray_problems(config)
    return lines


def summarize_cluster(path: str) -> str:
    """A few lines describing a (valid) cluster config: provider, head, worker types, code."""
    config, problems = _load(path)
    if config is None:
        return problems[0]
    provider = config.get("provider") or {}
    ptype = str(provider.get("type", "?"))
    defaults = _defaults(ptype)
    where = provider.get("region") or provider.get("availability_zone") or ""
    global_max = config.get("max_workers", defaults.get("max_workers", 2))
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")

    def machine(nt: dict) -> str:
        nc = nt.get("node_config") or {}
        m = nc.get("InstanceType") or str(nc.get("machineType", "?")).split("/")[-1]
        accels = [f"{a.get('acceleratorCount', 1)}x {str(a.get('acceleratorType', '?')).split('/')[-1]}"
                  for a in nc.get("guestAccelerators") or [] if isinstance(a, dict)]
        return m + (f" + {', '.join(accels)}" if accels else "")

    out = [f"{path}: Ray cluster {config.get('cluster_name')!r} on {ptype}{f' ({where})' if where else ''}, "
           f"up to {global_max} worker node{'s' * (global_max != 1)}"]
    if head in types:
        res = types[head].get("resources") or {}
        runs = "runs no trials" if res.get("CPU", None) == 0 else "RUNS TRIALS"
        out.append(f"  head    {head:<14} {machine(types[head])}: {runs} (resources {json.dumps(res)})")
    for name, nt in types.items():
        if name == head:
            continue
        res = nt.get("resources") or {}
        lo, hi = nt.get("min_workers", 0), nt.get("max_workers", global_max)
        market = "spot" if _is_spot(ptype, nt.get("node_config") or {}) else "on-demand"
        gpu = res.get("GPU", 0)
        desc = f"{res.get('CPU', '?')} CPU, {gpu} GPU" if res else "resources auto-detected"
        state = "off (max_workers 0)" if hi == 0 else f"{lo}..{hi} nodes"
        out.append(f"  worker  {name:<14} {machine(nt)}: {desc}, {market}, {state}")
    mounts = config.get("file_mounts") or {}
    for remote, local in mounts.items():
        folder = Path(os.path.expanduser(str(local)))
        shown = f" ({folder.resolve()})" if not folder.is_absolute() else ""
        out.append(f"  code    {remote} <- {local}{shown}")
    if ptype == "aws":
        profiles = {(t.get("node_config") or {}).get("IamInstanceProfile", {}).get("Name")
                    or (t.get("node_config") or {}).get("IamInstanceProfile", {}).get("Arn")
                    for n, t in types.items() if n != head}
        profiles.discard(None)
        out.append("  access  workers reach S3 through instance profile " + ", ".join(sorted(profiles))
                   if profiles else "  access  workers have no instance profile: they cannot write to s3://")
    elif ptype == "gcp":
        accounts = {a.get("email") for n, t in types.items() if n != head
                    for a in (t.get("node_config") or {}).get("serviceAccounts") or [] if isinstance(a, dict)}
        accounts.discard(None)
        out.append("  access  workers reach gs:// through service account " + ", ".join(sorted(accounts))
                   if accounts else "  access  workers use the project's default service account")
    return "\n".join(out)
