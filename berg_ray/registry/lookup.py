"""Looking models up: every model berg-ray knows (BrainScore, built-in, custom) by id, and the ids it can run."""

from __future__ import annotations

from berg_ray.errors import UnknownModelError, UnsupportedModelError, closest
from berg_ray.registry.builtin import builtin_specs
from berg_ray.registry.custom import custom_specs
from berg_ray.registry.plugins import brainscore_specs
from berg_ray.registry.spec import BRAINSCORE_PREFIX, ModelSpec


def all_specs(include_unsupported: bool = False) -> list[ModelSpec]:
    """BrainScore, built-in and custom models (custom ones last), optionally with the unsupported ones."""
    specs = [s for s in brainscore_specs() if include_unsupported or s.supported]
    specs += builtin_specs()
    specs += list(custom_specs().values())
    return specs


def list_models(expand_brainscore_language: bool = True) -> list[str]:
    """Ids of every model berg-ray can run, e.g. ``["brainscore_language-distilgpt2", ...]``.

    Args:
        expand_brainscore_language: list each BrainScore model separately (BERG's flag); if False, the
            BrainScore models are summarised as the one gateway id ``"brainscore_language"``.
    """
    ids = [s.model_id for s in all_specs()]
    if not expand_brainscore_language:
        others = [i for i in ids if not i.startswith(BRAINSCORE_PREFIX)]
        return ["brainscore_language", *others]
    return ids


def get_spec(model_id: str | ModelSpec) -> ModelSpec:
    """Look up a model by id; bare BrainScore ids (``"gpt2"``) are accepted as aliases.

    Raises:
        UnknownModelError: naming the id and the closest known ids.
        UnsupportedModelError: for registrations berg-ray cannot run, with the reason.
    """
    if isinstance(model_id, ModelSpec):
        return model_id
    if not isinstance(model_id, str) or not model_id:
        raise UnknownModelError(f"model id must be a non-empty string, got {model_id!r}")
    every = {s.model_id: s for s in all_specs(include_unsupported=True)}
    spec = every.get(model_id) or every.get(BRAINSCORE_PREFIX + model_id)
    if spec is None:
        hint = closest(model_id, [i for i, s in every.items() if s.supported])
        raise UnknownModelError(
            f"unknown model {model_id!r}; closest known ids: {', '.join(hint) if hint else '(none)'}. "
            "Run `berg-ray models` for the full list, or add one with berg_ray.register_model().")
    if not spec.supported:
        raise UnsupportedModelError(f"model {spec.model_id!r} is registered in brainscore-language but berg-ray "
                                    f"cannot run it here ({spec.status}): {spec.reason}")
    return spec
