"""Grammar-constrained sampling for the embedded model that checks the grammar on one token, not 152k.

llama-cpp-python's high-level API puts the grammar sampler into the sampling chain, so for every
generated token llama.cpp matches the grammar against the whole vocabulary (151,936 tokens for Qwen2.5):
about 25 ms per token on 2 cores, a third of the 1.5B model's generation time for a verdict. llama.cpp's
own tools (``common/sampling.cpp``) sample without the grammar first, check only the chosen token, and
re-sample with the grammar over the whole vocabulary when that token is rejected. :func:`llama_class`
returns a ``llama_cpp.Llama`` subclass that does the same; every emitted token still passes the grammar,
so constrained output stays valid.

The distribution differs from grammar-first sampling only in which valid token is drawn when the
unconstrained draw was invalid; llama.cpp accepts that trade, and so do we.
"""

from __future__ import annotations

import ctypes
import functools
import math
from typing import Any

import numpy as np

__all__ = ["llama_class"]


class _GrammarLastSampler:
    """Stand-in for llama-cpp-python's ``LlamaSampler`` (it only needs ``sample(ctx, idx)``)."""

    def __init__(self, chain: Any, grammar: Any, vocab: Any, n_vocab: int) -> None:
        import llama_cpp

        self._lc = llama_cpp
        self._chain = chain  # LlamaSampler without the grammar; owns and frees its samplers
        self._grammar = llama_cpp.llama_sampler_init_grammar(
            vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self._grammar:
            raise ValueError("llama.cpp rejected the grammar")
        self._n_vocab = n_vocab
        self._buf = (llama_cpp.llama_token_data * n_vocab)()
        self._view = np.ctypeslib.as_array(self._buf)  # structured (id, logit, p) view of the buffer
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._one = (llama_cpp.llama_token_data * 1)()

    def _candidates(self, ctx: Any, idx: int) -> Any:
        lc = self._lc
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, idx), shape=(self._n_vocab,))
        # Samplers sort and truncate the array in place, so it is refilled for every pass.
        self._view["id"] = self._ids
        self._view["logit"] = logits
        self._view["p"] = 0.0
        return lc.llama_token_data_array(
            data=ctypes.cast(self._buf, lc.llama_token_data_p), size=self._n_vocab, selected=-1, sorted=False
        )

    def _allowed(self, token: int) -> bool:
        lc = self._lc
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        one = lc.llama_token_data_array(
            data=ctypes.cast(self._one, lc.llama_token_data_p), size=1, selected=-1, sorted=False
        )
        lc.llama_sampler_apply(self._grammar, ctypes.byref(one))
        return not math.isinf(self._one[0].logit)

    def sample(self, ctx: Any, idx: int) -> int:
        """Draw the next token at logits row ``idx`` of ``ctx`` (a llama-cpp-python ``LlamaContext``)."""
        lc = self._lc
        cur = self._candidates(ctx.ctx, idx)
        lc.llama_sampler_apply(self._chain.sampler, ctypes.byref(cur))
        token = int(cur.data[cur.selected].id)
        if not self._allowed(token):
            cur = self._candidates(ctx.ctx, idx)
            lc.llama_sampler_apply(self._grammar, ctypes.byref(cur))
            lc.llama_sampler_apply(self._chain.sampler, ctypes.byref(cur))
            token = int(cur.data[cur.selected].id)
        lc.llama_sampler_accept(self._grammar, token)
        lc.llama_sampler_accept(self._chain.sampler, token)
        return token

    def close(self) -> None:
        """Free the grammar sampler (the chain frees itself)."""
        if self._grammar:
            self._lc.llama_sampler_free(self._grammar)
            self._grammar = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn llama_cpp down already
            pass


@functools.cache
def llama_class() -> type:
    """``llama_cpp.Llama`` with grammar-last sampling (imported lazily: llama-cpp-python is optional)."""
    from llama_cpp import Llama

    class GrammarLastLlama(Llama):  # type: ignore[misc]
        def _init_sampler(self, *args: Any, grammar: Any = None, **kwargs: Any) -> Any:
            chain = super()._init_sampler(*args, grammar=None, **kwargs)
            if grammar is None:
                return chain
            return _GrammarLastSampler(chain, grammar, self._model.vocab, self._n_vocab)

    return GrammarLastLlama
