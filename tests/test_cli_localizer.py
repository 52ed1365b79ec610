"""``berg-ray register`` for localizer models: ``--layer`` once per layer plus ``--localizer-top-k``.

The command runs in a subprocess with its own registry file (``$BERG_RAY_REGISTRY``, a temporary file), so this
process finds the model only through that file, as every later process does. The masked width of the features is
checked against brainscore's definition (``is_topk``: the ``k`` largest distinct t-values over the layers × units
matrix, ``k = int(top_k · n_layers · n_units)`` for a fraction; random weights give no ties), and the features
against the same localizer registered through the Python API (which test_localizer.py ties to brainscore's own
``HuggingfaceSubject(use_localizer=True)``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from support import REPO_ROOT, environ, subprocess_env

from berg_ray import localizer, registry
from berg_ray.cli import main as cli_main
from berg_ray.features import extract_features
from berg_ray.localizer import LOCALIZED_LAYER
from berg_ray.registry import get_spec, register_model, unregister_model
from berg_ray.validation import check_register_arguments, parse_top_k

LAYERS = ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
#: the tiny GPT-2 of conftest.py: 3 blocks of width 32
N_UNITS = 3 * 32
SENTENCES = ["The accordion is a portable musical instrument.", "Whales breathe air through a blowhole.",
             "Is this the third sentence ?"]


@pytest.fixture(scope="module", autouse=True)
def mask_cache(tmp_path_factory):
    """berg-ray's localizer mask cache in a temporary folder; no mask held in memory before or after."""
    with environ(BERG_RAY_LOCALIZER_CACHE=str(tmp_path_factory.mktemp("localizer_masks"))):
        localizer.clear_memo()
        try:
            yield
        finally:
            localizer.clear_memo()


@pytest.fixture(autouse=True)
def registry_file(monkeypatch, tmp_path):
    """Never read or write the user's own registry file."""
    path = tmp_path / "registry" / "models.json"
    monkeypatch.setenv("BERG_RAY_REGISTRY", str(path))
    return path


def _register_in_subprocess(model_id: str, folder: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "berg_ray.cli", "register", model_id, "--source", folder, *flags],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env=subprocess_env(PYTHONWARNINGS="ignore"))


@pytest.mark.parametrize(("text", "top_k", "width"), [("0.1", 0.1, int(0.1 * N_UNITS)), ("5", 5, 5)],
                         ids=["fraction", "unit-count"])
def test_cli_registers_a_localizer_model(tiny_gpt2, registry_file, capsys, text, top_k, width):
    model_id, api_id = f"cli-loc-{text}", f"api-loc-{text}"
    result = _register_in_subprocess(model_id, tiny_gpt2.folder, *[f"--layer={layer}" for layer in LAYERS],
                                     "--localizer-top-k", text)
    assert result.returncode == 0, result.stderr
    assert (f"registered localizer model {model_id}" in result.stdout and "with 3 layers" in result.stdout
            and f"top-k {text} " in result.stdout), result.stdout
    try:
        spec = get_spec(model_id)  # read from the registry file the subprocess wrote
        assert spec.layer == LOCALIZED_LAYER and spec.localizer_layers == tuple(LAYERS)
        assert spec.localizer_top_k == top_k and type(spec.localizer_top_k) is type(top_k)  # "5" is a unit count
        stored = {e["model_id"]: e for e in json.loads(registry_file.read_text())}[model_id]
        assert stored["localizer_layers"] == LAYERS and stored["localizer_top_k"] == top_k

        assert cli_main(["models"]) == 0
        line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(model_id + " "))
        assert LOCALIZED_LAYER in line and f"3 layers ({', '.join(LAYERS)}) and top-k {text} " in line

        features = extract_features(model_id, SENTENCES, device="cpu")
        assert features.shape == (len(SENTENCES), width)
        register_model(api_id, tiny_gpt2.folder, LAYERS, localizer_top_k=top_k)
        np.testing.assert_array_equal(features, extract_features(api_id, SENTENCES, device="cpu"))
    finally:
        unregister_model(model_id)
        unregister_model(api_id)


H0, H1 = LAYERS[:2]
BAD = {
    "zero": (["--layer", H0, "--layer", H1, "--localizer-top-k", "0"], ["--localizer-top-k 0", "selects no unit"]),
    "above-one": (["--layer", H0, "--layer", H1, "--localizer-top-k", "1.5"], ["1.5", "not a fraction in (0, 1)"]),
    "negative": (["--layer", H0, "--localizer-top-k", "-3"], ["-3", "selects no unit"]),
    "negative=": (["--layer", H0, "--layer", H1, "--localizer-top-k=-3"], ["-3", "selects no unit"]),
    "not-a-number": (["--layer", H0, "--layer", H1, "--localizer-top-k", "abc"], ["'abc' is not a number"]),
    "no-top-k": (["--layer", H0, "--layer", H1], ["2 layers", "needs --localizer-top-k"]),
    "comma-list": (["--layer", f"{H0},{H1}", "--localizer-top-k", "0.1"], ["holds a comma", f"--layer {H1}"]),
    "repeated": (["--layer", H0, "--layer", H0, "--localizer-top-k", "0.1"], [f"'{H0}' more than once"]),
    "missing-layer": (["--layer", H0, "--layer", "transformer.h.9", "--localizer-top-k", "0.1"],
                      ["'transformer.h.9' is not a module", "transformer.h.2"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_register_refuses_bad_localizer_arguments(tiny_gpt2, registry_file, capsys, monkeypatch, case):
    flags, fragments = BAD[case]
    built = []
    if case != "missing-layer":  # everything else is refused before the registry builds the model from its config
        monkeypatch.setattr(registry.sources, "weightless_model", lambda *args, **kwargs: built.append(args))
    assert cli_main(["register", f"bad-{case}", "--source", tiny_gpt2.folder, *flags]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("berg-ray register: error: "), captured.err
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert built == [] and not registry_file.exists()


def test_top_k_text_parses_to_a_unit_count_or_a_fraction():
    assert parse_top_k("4096") == 4096 and type(parse_top_k("4096")) is int
    assert parse_top_k("0.1") == 0.1 and type(parse_top_k("0.1")) is float
    assert check_register_arguments(layers=[H0], cli=True) == ([H0], None)
    assert check_register_arguments(layers=LAYERS, localizer_top_k="7", cli=True) == (LAYERS, 7)
