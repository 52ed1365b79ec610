"""Small transformers models built from a config on this machine (no hub): for tests, benchmarks and demos.

Weights are random (seeded) but the architecture, tokenizer interface and module names are the real ones, so
everything that works on them works on the hub checkpoints of the same class.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

_DEFAULT_CORPUS = [
    "The accordion is a portable musical instrument with a keyboard and bellows.",
    "A doctor examines patients, diagnoses illnesses and prescribes treatments in a clinic.",
    "Whales are large marine mammals that breathe air through a blowhole on their heads.",
    "Thunderstorms form when warm moist air rises quickly into cooler layers of the atmosphere.",
    "The castle was built on a hill so that its defenders could see approaching armies.",
    "Carrots are root vegetables that are usually orange and rich in vitamin A.",
]


def build_bpe_tokenizer(folder: str | Path, corpus: Iterable[str] | None = None, vocab_size: int = 1000,
                        model_max_length: int = 1024):
    """Train a byte-level BPE tokenizer (GPT-2 style, ``<|endoftext|>``) on ``corpus`` and save it to ``folder``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    texts = list(corpus) if corpus is not None else []
    texts += _DEFAULT_CORPUS
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                  model_max_length=model_max_length)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def build_llama_tokenizer(folder: str | Path, corpus: Iterable[str] | None = None, vocab_size: int = 1000,
                          model_max_length: int = 4096):
    """Train a SentencePiece-style BPE tokenizer with Llama's interface (``LlamaTokenizerFast``: ``<s>`` prepended,
    ``</s>``, ``<unk>``, ``▁`` word starts) on ``corpus`` and save it to ``folder`` (a stand-in for the gated
    ``meta-llama/Llama-2-7b-hf`` tokenizer that brainscore's suma reads)."""
    from tokenizers import SentencePieceBPETokenizer
    from transformers import LlamaTokenizerFast

    texts = list(corpus) if corpus is not None else []
    texts += _DEFAULT_CORPUS
    bpe = SentencePieceBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1, special_tokens=["<unk>", "<s>", "</s>"])
    tokenizer = LlamaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", add_bos_token=True, add_eos_token=False,
                                   model_max_length=model_max_length)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def build_gpt2(folder: str | Path, *, n_layer: int = 3, n_embd: int = 32, n_head: int = 4, n_positions: int = 64,
               vocab_size: int | None = None, corpus: Iterable[str] | None = None, seed: int = 0) -> Path:
    """Save a randomly initialised ``GPT2LMHeadModel`` and a matching tokenizer to ``folder``.

    Args:
        vocab_size: model vocabulary (embedding and LM-head rows); default: the tokenizer's size. A larger one
            (e.g. GPT-2's 50,257) gives the real compute cost of the LM head while the tokenizer stays small.
        n_positions: maximum context in tokens; the tokenizer's ``model_max_length`` is set to it.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_bpe_tokenizer(folder, corpus, vocab_size=min(vocab_size or 1000, 1000),
                                    model_max_length=n_positions)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=max(vocab_size or 0, len(tokenizer)), n_layer=n_layer, n_embd=n_embd,
                        n_head=n_head, n_positions=n_positions, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).eval().save_pretrained(str(folder))
    logger.info("built GPT-2 (%d layers, width %d, vocab %d) in %s", n_layer, n_embd, config.vocab_size, folder)
    return folder


def build_bert(folder: str | Path, *, n_layer: int = 2, hidden: int = 32, n_head: int = 4,
               max_position: int = 48, seed: int = 0) -> Path:
    """Save a randomly initialised bidirectional BERT (loaded as ``BertLMHeadModel``) with a WordPiece tokenizer."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(_DEFAULT_CORPUS * 3, vocab_size=400, min_frequency=1)
    wordpiece.save_model(str(folder))
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=max_position)
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=n_layer,
                        num_attention_heads=n_head, intermediate_size=hidden * 2,
                        max_position_embeddings=max_position)
    BertModel(config).eval().save_pretrained(str(folder))
    return folder


def build_qwen3(folder: str | Path, *, n_layer: int = 2, hidden: int = 32, n_head: int = 4, n_kv_head: int = 2,
                max_position: int = 64, corpus: Iterable[str] | None = None, seed: int = 0) -> Path:
    """Save a randomly initialised ``Qwen3ForCausalLM`` (module names ``model.layers.{i}``, as the hub Qwen3 models
    that brainscore's ``qwen3-*-loc-10`` read) and a byte-level BPE tokenizer (:func:`build_bpe_tokenizer`) to
    ``folder``, in float32."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_bpe_tokenizer(folder, corpus, model_max_length=max_position)
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_kv_head,
                         head_dim=hidden // n_head, max_position_embeddings=max_position,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True, torch_dtype="float32")
    Qwen3ForCausalLM(config).eval().save_pretrained(str(folder))
    logger.info("built Qwen3 (%d layers, width %d, vocab %d) in %s", n_layer, hidden, config.vocab_size, folder)
    return folder
