"""cluster.yaml is a valid Ray 2.60 autoscaler config, and it is the cluster berg-ray needs.

Validation is the offline part of what ``ray up`` does (``ray.autoscaler._private.commands._bootstrap_config``):
``prepare_config`` (merge the AWS defaults, merge setup commands, check docker, fill per-type min/max workers) then
``validate_config`` (JSON schema ``ray/autoscaler/ray-schema.json`` + cross-field checks). The steps of ``ray up`` that
talk to AWS (``fillout_available_node_types_resources``, ``bootstrap_config``) are not called, and a fixture makes
any network connection attempt fail the test. Typos *inside* ``node_config`` (EC2 fields) are not caught: the schema
leaves ``node_config`` open and only EC2 itself checks it.
"""

from __future__ import annotations

import copy
import json
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray
import ray.autoscaler
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
SCHEMA_PATH = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
CACHE_ENV_VAR = "BERG_RAY_CACHE"


# -- helpers ------------------------------------------------------------------------------------------------------

def load_cluster_yaml() -> dict:
    # `ray up` reads the file with yaml.safe_load too
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def ray_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return json.load(f)


def validate_like_ray_up(cfg: dict) -> dict:
    """The offline checks of ``ray up``; returns the prepared config. Raises jsonschema.ValidationError/ValueError."""
    jsonschema.validate(cfg, ray_schema())  # the raw file, before defaults can paper over a misspelled key
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def gpu_count(node_type: dict) -> int:
    return node_type.get("resources", {}).get("GPU", 0)


def _index_of(commands: list[str], pattern: str) -> int:
    hits = [i for i, c in enumerate(commands) if re.search(pattern, c)]
    if not hits:
        raise ValueError(f"no setup command matches {pattern!r}")
    return hits[0]


TORCH_INSTALL = r"pip install\b.*['\"]?torch\b"
BERG_RAY_INSTALL = r"pip install\b.*\s(-e\s+)?/home/ray/berg-ray/?(\s|$)"
LOCK = "-c /home/ray/berg-ray/constraints.txt"


def check_berg_ray_requirements(cfg: dict) -> None:
    """What berg-ray needs beyond Ray's own checks, on a *prepared* config. Raises ValueError."""
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]

    for name, t in types.items():
        if t["min_workers"] > t["max_workers"]:
            raise ValueError(f"node type {name!r}: min_workers {t['min_workers']} > max_workers {t['max_workers']}")

    # Absent "GPU" means "autodetect from the instance type", so the head must say GPU: 0 explicitly.
    if head.get("resources", {}).get("GPU") != 0:
        raise ValueError("the head node type must declare resources GPU: 0 so GPU actors never land on it")

    gpu_types = {name: t for name, t in types.items() if name != cfg["head_node_type"] and gpu_count(t) >= 1}
    if not gpu_types:
        raise ValueError("no worker node type offers a GPU")
    for name, t in gpu_types.items():
        if t["max_workers"] < 1:
            raise ValueError(f"GPU node type {name!r} can never start (max_workers < 1)")

    # After prepare_config, head/worker_setup_commands hold the full ordered list each node kind runs.
    for key in ("head_setup_commands", "worker_setup_commands"):
        commands = cfg[key]
        if _index_of(commands, TORCH_INSTALL) > _index_of(commands, BERG_RAY_INSTALL):
            raise ValueError(f"{key}: torch must be installed before berg-ray")
        if not any(re.search(rf"export {CACHE_ENV_VAR}=s3://\S+", c) for c in commands):
            raise ValueError(f"{key}: {CACHE_ENV_VAR} is not exported with an s3:// location")


# -- fixtures -----------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Validation must stay offline: any DNS lookup or connection (e.g. boto3 reaching AWS) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted during cluster config validation: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def cfg() -> dict:
    return load_cluster_yaml()


# -- the file validates -------------------------------------------------------------------------------------------

def test_cluster_yaml_passes_rays_schema_and_validate_config(cfg):
    prepared = validate_like_ray_up(cfg)
    assert prepared["cluster_name"] == "berg-ray"
    assert prepared["provider"]["type"] == "aws"


def test_raw_validate_config_alone_rejects_even_a_valid_file(cfg):
    # Why prepare_config must come first: validate_config expects defaults (cluster_synced_files, ...) filled in.
    with pytest.raises(RuntimeError, match="cluster_synced_files"):
        validate_config(copy.deepcopy(cfg))


# -- what berg-ray needs ------------------------------------------------------------------------------------------

def test_cluster_yaml_meets_berg_ray_requirements(cfg):
    check_berg_ray_requirements(validate_like_ray_up(cfg))


def test_gpu_worker_type_has_a_gpu_and_scales_from_zero(cfg):
    prepared = validate_like_ray_up(cfg)
    gpu = prepared["available_node_types"]["gpu_worker"]
    assert gpu_count(gpu) >= 1
    assert 0 == gpu["min_workers"] <= gpu["max_workers"] == 8
    assert prepared["max_workers"] >= gpu["max_workers"], "the global cap would cut the GPU pool"


def test_head_has_no_gpu_resources(cfg):
    prepared = validate_like_ray_up(cfg)
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("GPU") == 0
    assert head["max_workers"] == 0
    assert any("--num-gpus=0" in c for c in prepared["head_start_ray_commands"] if "ray start --head" in c)


def test_setup_installs_torch_before_berg_ray_on_every_node(cfg):
    prepared = validate_like_ray_up(cfg)
    for key in ("head_setup_commands", "worker_setup_commands"):
        commands = prepared[key]
        assert _index_of(commands, TORCH_INSTALL) < _index_of(commands, BERG_RAY_INSTALL), key


def test_every_pip_install_on_the_nodes_uses_the_repository_lock(cfg):
    # Without the lock a node resolves its own versions (and an old pip gives up on s3fs/botocore/moto); with it,
    # every node gets the versions the test suite ran with.
    prepared = validate_like_ray_up(cfg)
    for key in ("head_setup_commands", "worker_setup_commands"):
        installs = [c for c in prepared[key] if re.search(r"\bpip install\b", c)]
        assert len(installs) >= 2 and all(LOCK in c for c in installs), (key, installs)
    assert (Path(__file__).parents[1] / "constraints.txt").is_file()


def test_berg_ray_is_installed_from_the_synced_repository(cfg):
    # the path pip installs must be the remote side of the file mount of the repository root
    assert cfg["file_mounts"].get("/home/ray/berg-ray") == "."


def test_s3_cache_env_var_is_set_on_every_node(cfg):
    prepared = validate_like_ray_up(cfg)
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any(re.search(rf"export {CACHE_ENV_VAR}=s3://\S+", c) for c in prepared[key]), key


def test_docker_image_matches_the_installed_ray_and_python(cfg):
    # Ray on the laptop, in the image and in berg-ray's pins must agree, or `ray up` and job submission break.
    assert cfg["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py311")


# -- the validation can fail ----------------------------------------------------------------------------------------

def test_misspelled_top_level_key_is_rejected(cfg):
    bad = copy.deepcopy(cfg)
    bad["max_worker"] = bad.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(bad, ray_schema())
    # Ray's own path rejects it too (prepare_config fills in max_workers, the stray key stays)
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(copy.deepcopy(bad)))


def test_wrong_type_is_rejected(cfg):
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "1"
    with pytest.raises(jsonschema.ValidationError, match="not of type 'integer'"):
        validate_like_ray_up(bad)


def test_head_node_type_naming_a_missing_type_is_rejected(cfg):
    bad = copy.deepcopy(cfg)
    bad["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="`head_node_type` must be one of `available_node_types`"):
        validate_like_ray_up(bad)


def test_gpu_min_workers_above_max_workers_is_rejected(cfg):
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_worker"]["min_workers"] = 9  # max_workers is 8
    # Ray's validate_config compares only the *sum* of min_workers with the global max_workers (12), so it lets
    # this through; berg-ray's check is what catches it.
    prepared = validate_like_ray_up(bad)
    with pytest.raises(ValueError, match="min_workers 9 > max_workers 8"):
        check_berg_ray_requirements(prepared)


def test_min_workers_summing_above_global_max_workers_is_rejected_by_ray(cfg):
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_worker"]["min_workers"] = 13  # global max_workers is 12
    with pytest.raises(ValueError, match="smaller than the sum of `min_workers`"):
        validate_like_ray_up(bad)


def test_head_without_explicit_gpu_zero_is_rejected(cfg):
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["head_cpu"]["resources"] = {}  # would be autodetected from the instance type
    with pytest.raises(ValueError, match="GPU: 0"):
        check_berg_ray_requirements(validate_like_ray_up(bad))


def test_torch_installed_after_berg_ray_is_rejected(cfg):
    bad = copy.deepcopy(cfg)
    bad["setup_commands"] = [c for c in bad["setup_commands"] if "torch" not in c] + ["pip install 'torch==2.13.*'"]
    with pytest.raises(ValueError, match="torch must be installed before berg-ray"):
        check_berg_ray_requirements(validate_like_ray_up(bad))


def test_missing_cache_env_var_is_rejected(cfg):
    bad = copy.deepcopy(cfg)
    bad["setup_commands"] = [c for c in bad["setup_commands"] if CACHE_ENV_VAR not in c]
    with pytest.raises(ValueError, match=CACHE_ENV_VAR):
        check_berg_ray_requirements(validate_like_ray_up(bad))


def test_network_guard_is_active():
    # the offline guarantee above rests on this fixture working
    with pytest.raises(AssertionError, match="network access attempted"):
        socket.create_connection(("ec2.us-east-1.amazonaws.com", 443), timeout=1)
