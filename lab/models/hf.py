"""Real models through transformers: a LanguageModel and its KV-cached Session.

Speculative decoding needs three cache operations and nothing else: prefill
the prompt, extend by K tokens in ONE forward pass (the verify step, whose
cost versus K is what the lab measures), and roll back to the accepted prefix
without recomputing it.  `HFSession` maps them onto a transformers
`DynamicCache`: extend passes explicit position ids and keeps only the K
logits rows it needs (`logits_to_keep`), rollback is `DynamicCache.crop`.

    draft, target = from_pretrained_pair("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct")
    s = target.new_session()
    logits = s.prefill(target.encode_prompt("def fib(n):"))   # [vocab]
    rows = s.extend([t1, t2, t3])                             # [3, vocab], one pass
    s.rollback(s.length - 2)                                  # drop the last two

CPU threads are a process-wide torch setting (`set_threads`); the lab gives
the edge and the cloud one thread each on a 2-core host so they do not steal
each other's core, and records the value.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from lab.models import CachedSession, ModelError

DTYPES = ("bfloat16", "float32")
# The Linear layers' kernels.  packed: weights packed once for oneDNN, so a block verify costs about
# one decode step on CPU (lab/models/packed.py; docs/MEASUREMENTS.md, "Block verify"); the target's
# default.  int8: dynamic int8 quantisation (lab/models/quant.py), for a draft only: it changes the
# weights, and the draft's weights only move acceptance, never the target's output.
KERNELS = ("default", "packed", "int8")
KERNELS_DEFAULT = "packed"


def default_kernels(role: str, dtype: str) -> str:
    """The kernels a role gets unless asked.  The draft is int8 where that runs: on an AVX2-only CPU
    its step is 2.8x faster than packed fp32 and co-located speculation 1.5x faster, the target's
    tokens unchanged (docs/MEASUREMENTS.md, "On a real AVX2-only CPU").  What answers alone
    (edge-only) stays packed: edge_node `_alone_model`.  Results record the kernels of every model."""
    from lab.models.cpu import int8_runs_here

    if role == "draft" and int8_runs_here(dtype):
        return "int8"
    return KERNELS_DEFAULT


def set_threads(n: int) -> int:
    """Set torch's intra-op thread count for this process; returns the value now in effect."""
    import torch

    if n < 1:
        raise ModelError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return torch.get_num_threads()


def tokenizer_sha256(tokenizer) -> str:
    """sha256 of the vocabulary (token -> id, added tokens included); edge and cloud must agree."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} not supported on CPU here; use one of {DTYPES}")
    return getattr(torch, dtype)


class HFSession(CachedSession):
    """One sequence and its KV cache on a causal LM (batch size 1)."""

    def __init__(self, model):
        from transformers import DynamicCache

        self._model = model
        self._cache = DynamicCache(config=model.config)
        self._n_embed = int(model.get_input_embeddings().num_embeddings)
        self._vocab = int(model.get_output_embeddings().out_features)   # logits width, whatever the kernels
        self.length = 0

    def _forward(self, token_ids: list[int], keep: int) -> np.ndarray:
        """Run token_ids after the cached prefix; logits of the last `keep` positions, [keep, vocab] float32."""
        import torch

        n = len(token_ids)
        self._check_ids(token_ids, self._n_embed)
        ids = torch.tensor([list(map(int, token_ids))], dtype=torch.long)
        pos = torch.arange(self.length, self.length + n, dtype=torch.long).unsqueeze(0)
        with torch.inference_mode():
            out = self._model(input_ids=ids, position_ids=pos, cache=self._cache, use_cache=True,
                              logits_to_keep=keep)
        self.length += n
        if self._cache.get_seq_length() != self.length:
            raise ModelError(f"KV cache holds {self._cache.get_seq_length()} tokens, session expects "
                             f"{self.length}; this model's cache layout is not supported")
        return out.logits[0].float().numpy()

    def _crop(self, length: int) -> None:
        self._cache.crop(length - self.length)      # negative: number of tokens to drop

    @property
    def vocab_size(self) -> int:
        return self._vocab


class Tokenized:
    """The tokenizer side of a LanguageModel (a Hugging Face tokenizer), whatever computes the logits:
    prompts, the chat template, eos ids, the vocabulary hash.  HFModel and llama.cpp's model share it,
    so the same prompt is the same token ids under either back-end."""

    def _set_tokenizer(self, tokenizer, vocab_size: int, model_id: str, *eos_sources) -> None:
        if len(tokenizer) > vocab_size:
            raise ModelError(f"{model_id}: tokenizer has {len(tokenizer)} tokens but logits only "
                             f"{vocab_size}; model and tokenizer do not belong together")
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.tokenizer_hash = tokenizer_sha256(tokenizer)
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        ids: list[int] = []        # every id that ends a generation, from each source, deduplicated
        for src in (*eos_sources, tokenizer):
            v = getattr(src, "eos_token_id", None)
            for x in (v if isinstance(v, (list, tuple)) else [v]):
                if x is not None and int(x) not in ids:
                    ids.append(int(x))
        self.eos_token_ids = tuple(ids)

    def encode_prompt(self, prompt: str, template: str = "chat") -> list[int]:
        """Prompt wrapped in the chat template (a single user turn, generation prompt appended).

        Models without a template (base models), and template="raw" (a few-shot prompt meant to be
        continued as it is), get the plain encoding; `has_chat_template` says which a model has.
        """
        if template == "raw" or not self.has_chat_template:
            return list(self.tokenizer.encode(prompt))
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode([int(t) for t in token_ids], skip_special_tokens=True)


class HFModel(Tokenized):
    """A transformers causal LM plus its tokenizer, behind the LanguageModel protocol.

    `model_id_or_dir` is a Hugging Face id or a local directory with
    safetensors and a tokenizer (the converted embedded models are the latter).
    """

    confidence_measured = True           # its own softmax

    def __init__(self, model_id_or_dir: str | Path, dtype: str = "float32", threads: int | None = None,
                 model_id: str | None = None, kernels: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.threads = set_threads(threads) if threads is not None else None
        src = str(model_id_or_dir)
        try:
            tok = AutoTokenizer.from_pretrained(src)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=_torch_dtype(dtype))
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load {src!r} with transformers ({e}); give a Hugging Face id "
                             "reachable from here or a directory with safetensors + tokenizer") from e
        self._init(model.eval(), tok, model_id or src, dtype)
        self._set_kernels(kernels or KERNELS_DEFAULT)

    @classmethod
    def from_objects(cls, model, tokenizer, model_id: str, dtype: str | None = None,
                     kernels: str = "default") -> "HFModel":
        """Wrap an already-built model and tokenizer (tests, custom loading); `kernels` other than
        "default" swap its Linear layers in place."""
        self = cls.__new__(cls)
        self.threads = None
        self._init(model.eval(), tokenizer, model_id, dtype or str(model.dtype).removeprefix("torch."))
        self._set_kernels(kernels)
        return self

    def _set_kernels(self, kernels: str) -> None:
        """Swap the Linear layers for packed or int8 ones when asked; packing falls back to torch's
        default where oneDNN cannot pack this dtype, int8 is refused where it cannot run."""
        from lab.models.packed import PAD_ROWS, can_pack, choose_min_rows, pack_linears
        from lab.models.quant import can_quantize, quantize_linears

        if kernels not in KERNELS:
            raise ModelError(f"kernels must be one of {', '.join(KERNELS)}; got {kernels!r}")
        if kernels == "packed" and can_pack(self.model.dtype):
            n = pack_linears(self.model)
            rows, ms = choose_min_rows(self.model)
            pad = (f"short forwards padded to {rows} rows: a step {ms[rows]:.0f} ms, {ms[1]:.0f} unpadded" if rows > 1
                   else f"unpadded: a step {ms[1]:.0f} ms, {ms[PAD_ROWS]:.0f} padded to {PAD_ROWS} rows")
            self.kernels = f"onednn-packed ({n} Linear layers; {pad})"
        elif kernels == "int8":
            if not can_quantize(self.model.dtype):
                raise ModelError(f"kernels int8 needs float32 weights and torch's fbgemm engine; "
                                 f"this model is {self.dtype}")
            self.kernels = f"int8-dynamic (fbgemm, per-channel; {quantize_linears(self.model)} Linear layers)"
            self.rows_interact = True            # activations quantised per call, over all its rows

    def _init(self, model, tokenizer, model_id: str, dtype: str) -> None:
        self.model, self.model_id, self.dtype = model, model_id, dtype
        self.n_params = sum(p.numel() for p in model.parameters())
        self.kernels = "torch default"
        self.rows_interact = False               # its sessions' (CachedSession.rows_interact)
        self.source: dict | None = None         # provenance (the embedded pair: GGUF name, sha256, conversion)
        self._set_tokenizer(tokenizer, int(model.get_output_embeddings().out_features),   # logits width
                            model_id, getattr(model, "generation_config", None), model.config)

    def new_session(self) -> HFSession:
        s = HFSession(self.model)
        s.rows_interact = self.rows_interact
        return s

    def describe(self) -> dict:
        """What results/meta.json records about this model (threads: torch's setting right now)."""
        import torch

        return {"model_id": self.model_id, "dtype": self.dtype, "vocab_size": self.vocab_size,
                "tokenizer_sha256": self.tokenizer_hash, "eos_token_ids": list(self.eos_token_ids),
                "threads": torch.get_num_threads(), "n_params": self.n_params, "kernels": self.kernels,
                "chat_template": self.has_chat_template, "source": self.source}

    def __repr__(self) -> str:
        return f"<HFModel {self.model_id} {self.dtype} vocab={self.vocab_size}>"


def greedy_generate(model: HFModel, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Plain autoregressive greedy decoding through a session: the reference output for losslessness."""
    s = model.new_session()
    logits = s.prefill(prompt_ids)
    out: list[int] = []
    while len(out) < max_new_tokens:
        tok = int(np.argmax(logits))
        out.append(tok)
        if tok in model.eos_token_ids:
            break
        logits = s.extend([tok])[-1]
    return out


def from_pretrained_pair(draft_id: str | Path, target_id: str | Path, dtype: str = "bfloat16",
                         threads: int | None = None) -> tuple[HFModel, HFModel]:
    """Load a draft/target pair; fails unless both use the same tokenizer (ids must mean the same)."""
    draft = HFModel(draft_id, dtype=dtype, threads=threads)
    target = HFModel(target_id, dtype=dtype, threads=threads)
    check_pair(draft, target)
    return draft, target


def check_pair(draft: HFModel, target: HFModel) -> None:
    """Speculative decoding compares token ids across models: the vocabularies must be identical.

    The logits widths may still differ (Qwen2.5-0.5B has 151,936, Qwen2.5-7B 152,064: padding rows
    no tokenizer id reaches); callers comparing distributions use the smaller width.
    """
    if draft.tokenizer_hash != target.tokenizer_hash:
        raise ModelError(f"draft {draft.model_id} and target {target.model_id} use different tokenizers "
                         f"({draft.tokenizer_hash[:12]} vs {target.tokenizer_hash[:12]}); pick two models "
                         "of the same family")
    if sorted(draft.eos_token_ids) != sorted(target.eos_token_ids):
        raise ModelError(f"draft {draft.model_id} stops at tokens {sorted(draft.eos_token_ids)} but target "
                         f"{target.model_id} at {sorted(target.eos_token_ids)}; speculation stops where the "
                         "target would, so the pair must share its end-of-sequence tokens")
