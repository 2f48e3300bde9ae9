"""What multi-sequence batch decoding would buy the embedded model: tokens/s for N sequences per step.

Batch decoding (several requests decoded together, one token each per llama_decode) pays off when decoding
is memory-bound: the weights are read once per step for all sequences. This measures it with llama.cpp's
batch API on a bundled model: a shared prompt is read once into sequence 0 and copied to N sequences of a
unified KV cache, then 20 steps decode one token for each of the N sequences. Printed per N: ms per step
and generated tokens/s summed over the sequences, and the speed-up over N = 1. Prompt reading (one
sequence, many tokens per step) is printed for comparison: it is the same arithmetic at a large batch.

    .venv/bin/python bench/bench_batch_decode.py [--model qwen2.5-coder-1.5b] [--n 1 2 4 8 16]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the product runs llama.cpp

import argparse
import time

STEPS = 20
PROMPT = ("You check synthetic personas for realism. Each candidate is a set of basic attributes of one "
          "person living in Japan. Decide whether the combination is realistic for one real person. ") * 3


def main(argv: list[str] | None = None) -> int:
    import llama_cpp as lc

    from personagen_core.local import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b", help="bundled model key or GGUF path")
    parser.add_argument("--n", type=int, nargs="*", default=[1, 2, 4, 8, 16], help="sequences per step")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    path = str(resolve_model_path(args.model))
    n_max = max(args.n)

    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(path.encode(), lc.llama_model_default_params())
    params = lc.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_seq_max, params.kv_unified = 2048, 512, n_max, True
    params.n_threads = params.n_threads_batch = args.threads
    ctx = lc.llama_init_from_model(model, params)
    vocab = lc.llama_model_get_vocab(model)
    memory = lc.llama_get_memory(ctx)
    buf = (lc.llama_token * 512)()
    data = PROMPT.encode()
    n_prompt = lc.llama_tokenize(vocab, data, len(data), buf, 512, True, False)
    batch = lc.llama_batch_init(512, 0, n_max)

    def add(token: int, pos: int, seq: int, logits: bool) -> None:
        i = batch.n_tokens
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
        batch.seq_id[i][0] = seq
        batch.n_tokens += 1

    def decode() -> None:
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    print(f"{args.model}: {n_prompt}-token prompt, {args.threads} threads, {STEPS} steps per N")
    base = None
    for n in args.n:
        lc.llama_memory_clear(memory, True)
        batch.n_tokens = 0
        for i in range(n_prompt):
            add(buf[i], i, 0, i == n_prompt - 1)
        start = time.perf_counter()
        decode()
        prompt_s = time.perf_counter() - start
        for seq in range(1, n):
            lc.llama_memory_seq_cp(memory, 0, seq, -1, -1)
        start = time.perf_counter()
        for step in range(STEPS):
            batch.n_tokens = 0
            for seq in range(n):
                add(1000 + seq + step, n_prompt + step, seq, True)  # any token: the cost is the same
            decode()
        per_step = (time.perf_counter() - start) / STEPS
        rate = n / per_step
        base = base or rate
        print(f"N={n:3d}: {per_step * 1000:7.1f} ms/step, {rate:6.1f} generated tok/s in all "
              f"({rate / base:.2f}x N=1); prompt reading {n_prompt / prompt_s:.0f} tok/s", flush=True)
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
