"""The ceiling of parallel decoding: raw llama-cpp-python decoding K sequences in one batch per step.

``inglenook bench --api --clients K`` prints it beside the API's aggregate: what K streams could reach
on this machine with no server, no pipes and no Python sampler chain. It loads the model as the engine does
for ``parallel = K`` (one KV stream per sequence, batch-independent kernels) in this process.
"""

from __future__ import annotations

import time
from pathlib import Path

from backends.base import LoadSettings
from backends.llamacpp import llama_kwargs, model_params


def raw_batch_ceiling(path: Path, settings: LoadSettings, prompt: str, clients: int, tokens: int) -> dict:
    """Greedy decode of ``tokens`` tokens for 1 sequence, then for ``clients`` sequences in one batch per step
    (alternated twice, the best of each kept). Returns the two decode speeds in tokens per second (all
    sequences together) and their ratio.
    """
    import llama_cpp
    import numpy as np

    kwargs = llama_kwargs(path, settings)
    kwargs["n_ctx"] = max(kwargs["n_ctx"], 256) * clients
    with model_params(False, clients):
        llm = llama_cpp.Llama(**kwargs)
    try:
        ctx, n_vocab = llm._ctx.ctx, llm.n_vocab()
        memory = llama_cpp.llama_get_memory(ctx)
        batch = llama_cpp.llama_batch_init(max(512, clients), 0, 1)
        prompts = [llm.tokenize(f"{prompt} ({i + 1})".encode()) for i in range(clients)]

        def decode(rows: list[tuple[int, int, int]]) -> list[int]:
            """Decode (seq, token, pos) rows, logits on each; the greedy next token of each row."""
            batch.n_tokens = len(rows)
            for i, (seq, token, pos) in enumerate(rows):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, True
                batch.seq_id[i][0] = seq
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            return [
                int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).argmax())
                for i in range(len(rows))
            ]

        def run(n: int) -> float:
            llama_cpp.llama_memory_seq_rm(memory, -1, -1, -1)
            last = []
            for seq in range(n):  # each prompt read alone, as the engine does
                tokens_in = prompts[seq]
                batch.n_tokens = len(tokens_in)
                for i, token in enumerate(tokens_in):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
                    batch.seq_id[i][0], batch.logits[i] = seq, i == len(tokens_in) - 1
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                logits = llama_cpp.llama_get_logits_ith(ctx, len(tokens_in) - 1)
                last.append(int(np.ctypeslib.as_array(logits, shape=(n_vocab,)).argmax()))
            start = time.perf_counter()
            for step in range(tokens):
                last = decode([(seq, last[seq], len(prompts[seq]) + step) for seq in range(n)])
            return n * tokens / (time.perf_counter() - start)

        # alternated, the best of two each: one busy moment on a shared machine would decide a single pair
        single = together = 0.0
        for _ in range(2):
            single, together = max(single, run(1)), max(together, run(clients))
        llama_cpp.llama_batch_free(batch)
    finally:
        llm.close()
    return {
        "clients": clients,
        "single_tokens_per_s": round(single, 2),
        "batch_tokens_per_s": round(together, 2),
        "ratio": round(together / single, 2) if single else 0.0,
    }
