"""berg_ray.registry and ``berg-ray models``/``register``: BrainScore ids, layers, custom models, persistence."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from berg_ray import registry
from berg_ray.cli import main as cli_main
from berg_ray.features import extract_features
from berg_ray.errors import InvalidInputError, UnknownModelError, UnsupportedModelError
from berg_ray.registry import all_specs, get_spec, list_models, register_model, unregister_model

warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]

#: the layer mappings brainscore-language 2.3.0 declares for these models (its plugins' region_layer_mapping)
DESIGN_MAPPINGS = {
    "brainscore_language-distilgpt2": ("distilgpt2", "transformer.h.5"),
    "brainscore_language-gpt2": ("gpt2", "transformer.h.11"),
    "brainscore_language-gpt2-medium": ("gpt2-medium", "transformer.h.22"),
    "brainscore_language-gpt2-large": ("gpt2-large", "transformer.h.33"),
    "brainscore_language-gpt2-xl": ("gpt2-xl", "transformer.h.43"),
    "brainscore_language-gpt-neo-125m": ("EleutherAI/gpt-neo-125m", "transformer.h.11"),
    "brainscore_language-tinyllama-1.1b": ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "model.layers.21"),
}


@pytest.fixture(autouse=True)
def isolated_registry_file(monkeypatch, tmp_path):
    """Never read or write the user's own registry file."""
    monkeypatch.setenv("BERG_RAY_REGISTRY", str(tmp_path / "registry" / "models.json"))
    return tmp_path / "registry" / "models.json"


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), "BS_INSTALL_DEPENDENCIES": "no",
                "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------- BrainScore models


def test_design_mappings_are_listed():
    ids = list_models()
    for model_id, (source, layer) in DESIGN_MAPPINGS.items():
        assert model_id in ids
        spec = get_spec(model_id)
        assert (spec.source, spec.layer, spec.supported, spec.origin) == (source, layer, True, "brainscore")


def test_mappings_match_brainscore_registrations(monkeypatch):
    """Run brainscore's own registration lambdas with a spy in place of HuggingfaceSubject (nothing downloads)."""
    from brainscore_language import model_registry

    for plugin in ("gpt", "tinyllama1_1b"):
        importlib.import_module(f"brainscore_language.models.{plugin}")
    calls: dict[str, dict] = {}

    def spy(*args, **kwargs):
        return {"args": args, **kwargs}

    plugin_keys = [k for k, fn in model_registry.items()
                   if fn.__globals__.get("__name__", "").startswith(("brainscore_language.models.gpt",
                                                                    "brainscore_language.models.tinyllama1_1b"))]
    assert len(plugin_keys) >= 10
    for key in plugin_keys:
        factory = model_registry[key]
        monkeypatch.setitem(factory.__globals__, "HuggingfaceSubject", spy)
        calls[key] = factory()
    for key, call in calls.items():
        (layer,) = call["region_layer_mapping"].values()
        spec = get_spec("brainscore_language-" + key)
        assert spec.source == call["model_id"], key
        assert spec.layer == layer, key
    for model_id, (source, layer) in DESIGN_MAPPINGS.items():
        call = calls[model_id.removeprefix("brainscore_language-")]
        assert (call["model_id"], *call["region_layer_mapping"].values()) == (source, layer)


def test_bare_brainscore_names_are_aliases():
    assert get_spec("gpt2").model_id == "brainscore_language-gpt2"
    assert get_spec("gpt-neo-125m").source == "EleutherAI/gpt-neo-125m"


@pytest.mark.parametrize("model_id, reason", [
    ("brainscore_language-glove-840b", "glove.840B.300d.txt"),
    ("brainscore_language-qwen3-0.6b-loc-10", "localizer"),
    ("brainscore_language-qwen3-32b-loc-10", "localizer"),
    ("brainscore_language-suma", "localizer"),
])
def test_unsupported_models_have_reasons(model_id, reason):
    every = {s.model_id: s for s in all_specs(include_unsupported=True)}
    assert model_id in every
    assert not every[model_id].supported and reason in every[model_id].reason
    assert model_id not in list_models()
    with pytest.raises(UnsupportedModelError) as info:
        get_spec(model_id)
    assert model_id in str(info.value) and reason in str(info.value)


def test_unknown_model_suggests_closest():
    with pytest.raises(UnknownModelError) as info:
        get_spec("brainscore_language-gpt3")
    assert "'brainscore_language-gpt3'" in str(info.value)
    assert "brainscore_language-gpt2" in str(info.value)


def test_list_models_gateway_form():
    compact = list_models(expand_brainscore_language=False)
    assert compact[0] == "brainscore_language"
    assert not any(i.startswith("brainscore_language-") for i in compact)
    assert "minilm-l6" in compact
    assert "minilm-l6" in list_models()


# ---------------------------------------------------------------------------------------------- CLI listing


def test_cli_models_table(capsys):
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for model_id, (source, layer) in DESIGN_MAPPINGS.items():
        assert model_id in lines
        assert source in lines[model_id] and layer in lines[model_id]
    assert "brainscore_language-glove-840b" not in out
    assert "runnable model(s)" in out


def test_cli_models_all_lists_unsupported(capsys):
    assert cli_main(["models", "--all"]) == 0
    out = capsys.readouterr().out
    glove = [line for line in out.splitlines() if line.startswith("brainscore_language-glove-840b")]
    assert glove and "needs-weights" in glove[0] and "glove.840B.300d.txt" in glove[0]
    assert any(line.startswith("brainscore_language-qwen3-0.6b-loc-10") and "localizer" in line
               for line in out.splitlines())
    assert cli_main(["models", "--all", "--json"]) == 0
    entries = {e["model_id"]: e for e in json.loads(capsys.readouterr().out)}
    assert entries["brainscore_language-gpt2"]["layer"] == "transformer.h.11"
    assert entries["brainscore_language-suma"]["supported"] is False


def _expected_statuses() -> dict[str, str]:
    """What each non-HuggingfaceSubject id of brainscore-language 2.3.0 needs on this machine, found independently
    of berg-ray: installed packages, files, environment variables and binaries."""
    import importlib.util
    import shutil

    from berg_ray.model_status import brainscore_models_dir

    plugins = brainscore_models_dir()
    tensorflow = importlib.util.find_spec("tensorflow") is not None
    runtime = shutil.which("singularity") or (shutil.which("docker") and (
        os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()))
    glove = (plugins / "glove" / "glove.840B.300d.txt").is_file() or Path(
        os.environ.get("BERG_RAY_GLOVE_WEIGHTS", "/nonexistent")).is_file()
    expected = {f"oasm-sigma{s}": "runnable" for s in ["0", *(f"{k / 10:.1f}" for k in range(1, 49))]}
    expected.update({
        "randomembedding-100": "runnable", "randomembedding-1600": "runnable",
        "glove-840b": "runnable" if glove else "needs-weights",
        "llada-8b-base": "runnable" if Path(os.environ.get("LLADA_MODEL_PATH", "/nonexistent")).is_dir()
        else "needs-weights",
        "lm1b": ("runnable" if (plugins / "lm1b" / "resources").is_dir() else "needs-weights") if tensorflow
        else "needs-dependency",
        "earley-parser-minivocab": "behaviour-only",
    })
    expected.update({f"rnn-{name}": "runnable" if runtime else "needs-container" for name in (
        "lm-ptb", "slm-ptb", "tdg-ptb", "slm-ptboanc", "tdg-ptboanc", "slm-ptboanc-1024", "tdg-ptboanc-1024")})
    return {"brainscore_language-" + key: status for key, status in expected.items()}


def test_every_brainscore_id_has_a_precise_status(capsys):
    from berg_ray.options import MODEL_STATUSES

    every = {s.model_id: s for s in registry.brainscore_specs()}
    assert len(every) == 94  # brainscore-language 2.3.0's registrations
    expected = _expected_statuses()
    assert len(expected) == 62  # 49 OASM + 2 random embeddings + glove, llada, lm1b, 7 rnn, earley
    for model_id, status in expected.items():
        spec = every[model_id]
        assert (spec.kind, spec.status, spec.supported) == ("delegated", status, status == "runnable"), model_id
        assert spec.reason and spec.layer == "language_system", model_id
    assert all(s.status in MODEL_STATUSES and (s.status == "runnable") == s.supported for s in every.values())
    localizer = {f"brainscore_language-qwen3-{size}-loc-10" for size in ("0.6b", "1.7b", "4b", "8b", "14b", "32b")}
    localizer.add("brainscore_language-suma")
    huggingface = [s for s in every.values() if s.model_id not in expected and s.model_id not in localizer]
    assert len(huggingface) == 25 and all(s.status == "runnable" and s.kind == "huggingface" for s in huggingface)
    controls = sorted(s.model_id for s in every.values() if s.control)
    assert len(controls) == 51 and all(("oasm-sigma" in c) or ("randomembedding" in c) for c in controls)
    # what each needs is named: the file and where it goes, the package, the runtime and image
    if expected["brainscore_language-glove-840b"] == "needs-weights":
        assert "BERG_RAY_GLOVE_WEIGHTS" in every["brainscore_language-glove-840b"].reason
    if expected["brainscore_language-lm1b"] == "needs-dependency":
        assert "pip install tensorflow" in every["brainscore_language-lm1b"].reason
    if expected["brainscore_language-rnn-slm-ptb"] == "needs-container":
        assert "benlipkin/rnng:1fd71a2df4a89ddd5f2129d2b7df1088e72ec1cb" in every[
            "brainscore_language-rnn-slm-ptb"].reason
    assert "LLADA_MODEL_PATH" in every["brainscore_language-llada-8b-base"].reason
    # the CLI prints every status and counts them
    assert cli_main(["models", "--all"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("brainscore_language-")}
    for model_id, status in expected.items():
        assert f"  {status}" in lines[model_id], model_id
    counted = dict(part.rsplit(" ", 1) for part in out.split("by status: ")[1].strip().split(", "))
    assert sum(int(n) for n in counted.values()) == len(all_specs(include_unsupported=True))


def test_discovery_is_fast_and_imports_no_torch(isolated_registry_file):
    script = (
        "import json, sys, time\n"
        "t = time.perf_counter()\n"
        "from berg_ray.registry import list_models, all_specs\n"
        "ids = list_models(); every = all_specs(include_unsupported=True)\n"
        "seconds = time.perf_counter() - t\n"
        "from berg_ray.cli import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['models', '--all'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'ray', 'sklearn') if m in sys.modules]\n"
        "print(json.dumps({'seconds': seconds, 'n': len(ids), 'n_all': len(every), 'heavy': heavy}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env=_subprocess_env(BERG_RAY_REGISTRY=str(isolated_registry_file)), cwd=REPO)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["seconds"] < 3.0
    assert report["n"] >= len(DESIGN_MAPPINGS) and report["n_all"] > report["n"]


# ---------------------------------------------------------------------------------------------- custom models


def test_custom_model_works_by_its_id(tiny_gpt2):
    custom_id = "my-lab/tiny-gpt2@layer2"
    spec = register_model(custom_id, tiny_gpt2.folder, "transformer.h.2")
    try:
        assert spec.origin == "custom" and Path(spec.source) == Path(tiny_gpt2.folder).resolve()
        assert get_spec(custom_id) == spec
        assert custom_id in list_models()
        sentences = ["A custom model reads this sentence.", "And this one , too !"]
        ours = extract_features(custom_id, sentences)
        same = extract_features(tiny_gpt2.model_id, sentences)
        assert ours.shape == (2, 32)
        np.testing.assert_array_equal(ours, same)
        with pytest.raises(UnknownModelError) as info:
            get_spec("my-lab/tiny-gpt2@layer3")
        assert custom_id in str(info.value)  # the near miss suggests the registered id
    finally:
        unregister_model(custom_id)
    with pytest.raises(UnknownModelError):
        get_spec(custom_id)


def _cli_models_in_subprocess(registry_file: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "berg_ray.cli", "models"], capture_output=True, text=True,
                            timeout=120, env=_subprocess_env(BERG_RAY_REGISTRY=str(registry_file)), cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_persisted_registration_is_seen_by_a_new_process(tiny_gpt2, isolated_registry_file):
    custom_id = "persisted-tiny-gpt2"
    register_model(custom_id, tiny_gpt2.folder, "transformer.h.1", persist=True)
    try:
        assert registry.registry_path() == isolated_registry_file
        entries = json.loads(isolated_registry_file.read_text())
        assert [(e["model_id"], e["layer"]) for e in entries] == [(custom_id, "transformer.h.1")]
        lines = [line for line in _cli_models_in_subprocess(isolated_registry_file).splitlines()
                 if line.startswith(custom_id)]
        assert len(lines) == 1 and "transformer.h.1" in lines[0] and str(Path(tiny_gpt2.folder).resolve()) in lines[0]
    finally:
        unregister_model(custom_id)
    assert json.loads(isolated_registry_file.read_text()) == []
    assert custom_id not in _cli_models_in_subprocess(isolated_registry_file)


def test_cli_register_persists(tiny_gpt2, isolated_registry_file, capsys):
    custom_id = "cli-registered-gpt2"
    try:
        assert cli_main(["register", custom_id, "--source", tiny_gpt2.folder, "--layer", "transformer.h.0"]) == 0
        assert custom_id in capsys.readouterr().out
        entries = {e["model_id"]: e for e in json.loads(isolated_registry_file.read_text())}
        assert entries[custom_id]["layer"] == "transformer.h.0"
        assert get_spec(custom_id).layer == "transformer.h.0"
    finally:
        unregister_model(custom_id)


@pytest.mark.parametrize("taken", ["brainscore_language-gpt2", "brainscore_language-glove-840b", "minilm-l6"])
def test_collision_with_existing_id_is_refused(tiny_gpt2, taken, isolated_registry_file):
    with pytest.raises(InvalidInputError) as info:
        register_model(taken, tiny_gpt2.folder, "transformer.h.1", persist=True)
    assert repr(taken) in str(info.value)
    assert not isolated_registry_file.exists()
    every = {s.model_id: s for s in all_specs(include_unsupported=True)}
    assert every[taken].origin in ("brainscore", "builtin")  # the original registration is untouched


def test_cli_register_collision_exits_2(tiny_gpt2, capsys):
    assert cli_main(["register", "brainscore_language-gpt2", "--source", tiny_gpt2.folder,
                     "--layer", "transformer.h.1"]) == 2
    assert "brainscore_language-gpt2" in capsys.readouterr().err


def test_register_rejects_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError) as info:
        register_model("no-config", str(tmp_path / "empty"), "transformer.h.1")
    assert "config.json" in str(info.value) and "empty" in str(info.value)
    with pytest.raises(InvalidInputError) as info:
        register_model("no-layer", "gpt2", "")
    assert "''" in str(info.value)
    with pytest.raises(InvalidInputError):
        register_model("", "gpt2", "transformer.h.1")


# ---------------------------------------------------------------------------------------------- registration checks


@pytest.mark.parametrize("kind", ["absolute", "dot", "home", "partial"])
def test_missing_local_folder_is_refused(kind, tmp_path, monkeypatch, isolated_registry_file):
    """A source that is meant as a folder but does not exist is refused now, not taken for a hub id and persisted
    (which used to fail much later with a raw HFValidationError)."""
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    source = {"absolute": str(tmp_path / "no-such-model"), "dot": "./no-such-model",
              "home": "~/berg-ray-no-such-model-folder", "partial": "models/no-such-model"}[kind]
    with pytest.raises(InvalidInputError) as info:
        register_model("missing-folder-model", source, "transformer.h.1", persist=True)
    assert repr(source) in str(info.value) and "does not exist" in str(info.value)
    assert not isolated_registry_file.exists()
    with pytest.raises(UnknownModelError):
        get_spec("missing-folder-model")


def test_hub_id_is_accepted_offline_and_a_malformed_one_is_not(isolated_registry_file):
    """``org/name`` that is no local path is a hub id (nothing downloads); a string that cannot be one is refused."""
    try:
        spec = register_model("hub-style-model", "some-org/some-model", "transformer.h.1", revision="v1",
                              persist=True)
        assert (spec.source, spec.revision, spec.is_local) == ("some-org/some-model", "v1", False)
        assert json.loads(isolated_registry_file.read_text())[0]["source"] == "some-org/some-model"
    finally:
        unregister_model("hub-style-model")
    for bad in ("some model with spaces", "org/name--x"):
        with pytest.raises(InvalidInputError) as info:
            register_model("malformed-hub-id", bad, "transformer.h.1", persist=True)
        assert repr(bad) in str(info.value) and "hub id" in str(info.value)
    assert json.loads(isolated_registry_file.read_text()) == []


def test_layer_missing_from_the_config_is_refused_with_the_nearest_names(tmp_path, isolated_registry_file):
    """The layer is checked on a weightless model built from config.json: a folder with the config alone suffices,
    a missing layer is refused naming it and the nearest module names (difflib)."""
    from berg_ray.offline_models import build_gpt2

    folder = build_gpt2(tmp_path / "tiny", n_layer=3, n_embd=32, n_head=4, n_positions=64, seed=0)
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_bytes((folder / "config.json").read_bytes())
    for source in (folder, config_only):
        for layer, nearest in (("transformer.h.9", "transformer.h.2"), ("transfomer.h.1.mlp", "transformer.h.1.mlp"),
                               ("encoder.layer.1", "transformer.h")):
            with pytest.raises(InvalidInputError) as info:
                register_model("tiny-bad-layer", str(source), layer, persist=True)
            message = str(info.value)
            assert repr(layer) in message and nearest in message and str(source) in message
    assert not isolated_registry_file.exists()
    try:  # a module below a block, and the config-only folder (no weights are read to check it)
        assert register_model("tiny-mlp-layer", str(folder), "transformer.h.1.mlp").layer == "transformer.h.1.mlp"
        assert register_model("tiny-config-only", str(config_only), "transformer.h.2").source == str(config_only)
    finally:
        unregister_model("tiny-mlp-layer")
        unregister_model("tiny-config-only")


def test_shadowing_a_brainscore_alias_needs_replace(tiny_gpt2, isolated_registry_file):
    with pytest.raises(InvalidInputError) as info:
        register_model("gpt2", tiny_gpt2.folder, tiny_gpt2.layer, persist=True)
    assert "'gpt2'" in str(info.value) and "brainscore_language-gpt2" in str(info.value)
    assert "replace=True" in str(info.value)
    assert get_spec("gpt2").model_id == "brainscore_language-gpt2"  # the alias still means BrainScore's gpt2
    assert not isolated_registry_file.exists()
    try:
        register_model("gpt2", tiny_gpt2.folder, tiny_gpt2.layer, replace=True)
        assert get_spec("gpt2").source == str(Path(tiny_gpt2.folder).resolve())  # shadowed on purpose
    finally:
        unregister_model("gpt2")
    assert get_spec("gpt2").model_id == "brainscore_language-gpt2"


def test_reregistering_an_id_needs_replace(tiny_gpt2, isolated_registry_file):
    custom_id = "re-registered-gpt2"
    try:
        first = register_model(custom_id, tiny_gpt2.folder, "transformer.h.1", persist=True)
        assert register_model(custom_id, tiny_gpt2.folder, "transformer.h.1", persist=True) == first  # same spec
        with pytest.raises(InvalidInputError) as info:
            register_model(custom_id, tiny_gpt2.folder, "transformer.h.2")
        assert repr(custom_id) in str(info.value) and "'transformer.h.1'" in str(info.value)
        assert "replace=True" in str(info.value)
        assert get_spec(custom_id) == first
        # registered only in the file (as by another process): still refused, naming the file
        registry.custom._custom.pop(custom_id)
        with pytest.raises(InvalidInputError) as info:
            register_model(custom_id, tiny_gpt2.folder, "transformer.h.0", persist=True)
        assert str(isolated_registry_file) in str(info.value)
        assert [e["layer"] for e in json.loads(isolated_registry_file.read_text())] == ["transformer.h.1"]
        second = register_model(custom_id, tiny_gpt2.folder, "transformer.h.2", persist=True, replace=True)
        assert get_spec(custom_id) == second and second.layer == "transformer.h.2"
        assert [e["layer"] for e in json.loads(isolated_registry_file.read_text())] == ["transformer.h.2"]
    finally:
        unregister_model(custom_id)


def test_cli_register_checks_and_replace_flag(tiny_gpt2, isolated_registry_file, capsys):
    custom_id = "cli-replaced-gpt2"
    try:
        assert cli_main(["register", custom_id, "--source", tiny_gpt2.folder, "--layer", "transformer.h.7"]) == 2
        err = capsys.readouterr().err
        assert "'transformer.h.7'" in err and "transformer.h.2" in err
        assert cli_main(["register", "gpt2", "--source", tiny_gpt2.folder, "--layer", "transformer.h.1"]) == 2
        assert "--replace" in capsys.readouterr().err
        assert cli_main(["register", custom_id, "--source", tiny_gpt2.folder, "--layer", "transformer.h.0"]) == 0
        assert cli_main(["register", custom_id, "--source", tiny_gpt2.folder, "--layer", "transformer.h.1"]) == 2
        assert "already registered" in capsys.readouterr().err
        assert cli_main(["register", custom_id, "--source", tiny_gpt2.folder, "--layer", "transformer.h.1",
                         "--replace"]) == 0
        entries = {e["model_id"]: e for e in json.loads(isolated_registry_file.read_text())}
        assert entries[custom_id]["layer"] == "transformer.h.1" and "gpt2" not in entries
    finally:
        unregister_model(custom_id)
