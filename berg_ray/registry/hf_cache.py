"""The local Hugging Face hub cache: where it is and which files of a hub repo it holds (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path


def hf_cache_dir() -> str:
    """The local Hugging Face hub cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hf_cached_file(repo: str, filename: str) -> str | None:
    """The path of ``filename`` of hub repo ``repo`` (default branch) in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=hf_cache_dir())
    return found if isinstance(found, str) else None


def hf_missing_files(repo: str) -> list[str]:
    """What the local Hugging Face cache lacks to load hub model ``repo`` offline: config, tokenizer config and
    safetensors weights (one file, or an index and every shard it names); empty when it has everything."""
    missing = [name for name in ("config.json", "tokenizer_config.json") if hf_cached_file(repo, name) is None]
    if hf_cached_file(repo, "model.safetensors") is None:
        index = hf_cached_file(repo, "model.safetensors.index.json")
        if index is None:
            missing.append("model.safetensors (or model.safetensors.index.json and its shards)")
        else:
            shards = sorted(set(json.loads(Path(index).read_text()).get("weight_map", {}).values()))
            missing += [shard for shard in shards if hf_cached_file(repo, shard) is None]
    return missing


def hf_missing_tokenizer_files(repo: str) -> list[str]:
    """The tokenizer files of hub repo ``repo`` that the local Hugging Face cache lacks (empty: it can load)."""
    missing = [] if hf_cached_file(repo, "tokenizer_config.json") else ["tokenizer_config.json"]
    if not (hf_cached_file(repo, "tokenizer.json") or hf_cached_file(repo, "tokenizer.model")):
        missing.append("tokenizer.json (or tokenizer.model)")
    return missing

