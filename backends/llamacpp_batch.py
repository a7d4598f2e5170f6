"""Parallel decoding (continuous batching) for llama.cpp: several generations share one loaded model.

Each generation is a sequence (a ``seq_id``, a *slot*) in one ``llama_batch``; every step decodes one
token of each running generation in one ``llama_decode``. New requests join between steps. Each has its own
sampler chain (seed, grammar, penalties), stop strings, cancel token and stopwatch. The context is
``parallel × n_ctx`` cells, each sequence in a KV stream of its own of ``n_ctx`` cells (``kv_unified = false``,
llama-server's default), so none can starve another and a sequence's cells are in the order a lone run has
them.

A prompt of several tokens is read in a decode of its own, never beside another stream's tokens: llama.cpp's
kernels are not batch-invariant (a row's result depends on how the batch is split), and this way a stream's
greedy output is exactly what it gives alone. One token of each stream shares one decode: each generating
stream's last token, and the one token left of a prompt whose start was in its slot; those rows are computed
one by one (see ``extra_buffer_types``).

A finished slot keeps its tokens: the next prompt that shares a good part of its start with them (the next
turn of the same conversation, a regenerated reply, a repeated prompt) keeps that start, the way llama-server
picks a slot by its cached prompt and llama-cpp-python keeps the longest common prefix. With the
per-conversation KV cache on (:mod:`backends.llamacpp_cache`), a slot's state goes there before its cells are
given to another prompt, and a prompt that finds no slot holding its start gets the cached state sharing the
longest start with it restored into its slot: more conversations than slots come back without being read
again.

All decoding happens on one thread (:class:`BatchDecoder`'s), whatever thread asks: llama.cpp's OpenMP
pools are per calling thread, and more pools than cores slow every decode.
"""

from __future__ import annotations

import codecs
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from backends.base import CancelToken, Chunk, GenerationError, SamplingParams, StopMatcher, Stopwatch
from backends.llamacpp_cache import MIN_PREFIX, PrefixCache, common_prefix, read_seq_state, write_seq_state

log = logging.getLogger(__name__)

_END = object()  # the end of one generation's chunk queue
_FORGET = object()  # asks the decode thread to empty the free slots' caches


@dataclass
class Job:
    """One generation handed to the decoder: prepared on the caller's thread, run on the decoder's."""

    prompt: list[int]
    params: SamplingParams
    sampler: object  # _internals.LlamaSampler, built for this job only
    budget: int
    cancel: CancelToken
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    watch: Stopwatch = field(default_factory=Stopwatch)


@dataclass
class Slot:
    """One sequence of the KV cache: what it holds, and the job using it (None when free)."""

    seq: int
    kv: list[int] = field(default_factory=list)  # tokens decoded into this sequence, in order
    used: float = 0.0  # when a job last took it (least recently used goes first)
    job: Job | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to decode
    last: int | None = None  # the token sampled last, decoded in the next step
    n: int = 0  # tokens generated
    cached: int = 0  # prompt tokens found in the slot's KV (not decoded again)
    stops: StopMatcher | None = None
    decoder: codecs.IncrementalDecoder | None = None
    logprobs: list[dict] = field(default_factory=list)


class BatchDecoder:
    """Runs up to ``slots`` generations of one ``llama_cpp.Llama`` together on its own thread."""

    def __init__(
        self,
        llm,
        slots: int,
        n_ctx_seq: int,
        is_eog: Callable[[int], bool],
        logprobs: Callable[[int, int, bytes, int], dict],
        kv_cache: PrefixCache | None = None,
    ) -> None:
        """``kv_cache``: where a slot's state goes before the slot serves another prompt, and where a prompt
        no slot holds the start of looks for it (used on the decode thread only)."""
        import llama_cpp

        self._lib = llama_cpp
        self._llm = llm
        self.n_ctx_seq = n_ctx_seq
        self._n_batch = max(llm.n_batch, slots)
        self._is_eog = is_eog
        self._logprobs = logprobs
        self._slots = [Slot(i) for i in range(slots)]
        self._cache = kv_cache
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._memory = llama_cpp.llama_get_memory(llm._ctx.ctx)
        self._incoming: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inglenook-batch", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Iterator[Chunk]:
        """Queue ``job`` and stream its chunks; closing the iterator early cancels the job."""
        if self._closed.is_set():
            raise GenerationError("the model was unloaded")
        self._incoming.put(job)
        done = False
        try:
            while True:
                item = job.out.get()
                if item is _END:
                    done = True
                    return
                if isinstance(item, BaseException):
                    done = True
                    raise item
                yield item
        finally:
            if not done:
                job.cancel.cancel()

    def forget(self) -> None:
        """Empty the cache of every free slot (before the next job starts): ``inglenook bench`` times cold prompts."""
        self._incoming.put(_FORGET)

    def close(self) -> None:
        """Stop the decode thread (running jobs end with an error) and free the batch."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._incoming.put(None)
        self._thread.join()
        self._lib.llama_batch_free(self._batch)

    # -- the decode thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        waiting: list[Job] = []
        while True:
            running = [s for s in self._slots if s.job is not None]
            try:
                # block only when there is nothing to decode
                item = self._incoming.get(block=not running and not waiting, timeout=None)
                while True:
                    if item is None:
                        return self._abort(running, waiting, "the model was unloaded")
                    if item is _FORGET:
                        for slot in self._slots:
                            if slot.job is None:
                                self._lib.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
                                slot.kv = []
                    else:
                        waiting.append(item)
                    item = self._incoming.get_nowait()
            except queue.Empty:
                pass
            while waiting and (slot := self._free_slot(waiting[0].prompt)) is not None:
                self._start(slot, waiting.pop(0))
            running = [s for s in self._slots if s.job is not None]
            if running:
                try:
                    self._step(running)
                except Exception as exc:  # a failed decode ends the jobs in it; the decoder keeps serving
                    log.exception("llama_decode failed")
                    for slot in running:
                        self._finish(slot, error=GenerationError(f"llama.cpp could not decode: {exc}"))

    def _abort(self, running: list[Slot], waiting: list[Job], why: str) -> None:
        for slot in running:
            self._finish(slot, error=GenerationError(why))
        for job in waiting:
            job.out.put(GenerationError(why))

    def _free_slot(self, prompt: list[int]) -> Slot | None:
        """The free slot holding the longest reusable start of the prompt, else the least recently used."""
        free = [s for s in self._slots if s.job is None]
        if not free:
            return None
        best = max(free, key=lambda s: self._reusable(s, prompt))
        if self._reusable(best, prompt):
            return best
        return min(free, key=lambda s: (bool(s.kv), s.used))

    @staticmethod
    def _reusable(slot: Slot, prompt: list[int]) -> int:
        """How many of the slot's cells the prompt can keep: their common start, at least one token short of the
        prompt (its last token's logits are needed), when that start is worth a slot (half the prompt, or
        ``MIN_PREFIX`` tokens). A regenerated reply, or a prompt repeated, keeps all but its last token, the
        way llama-cpp-python keeps the longest common prefix for a lone sequence."""
        n = min(common_prefix(slot.kv, prompt), len(prompt) - 1)
        return n if n > 0 and n >= min(MIN_PREFIX, len(prompt) // 2) else 0

    def _start(self, slot: Slot, job: Job) -> None:
        prompt = job.prompt
        keep = self._reusable(slot, prompt)
        if keep < len(slot.kv):
            self._keep(slot)
            if not (keep and self._lib.llama_memory_seq_rm(self._memory, slot.seq, keep, -1)):
                self._lib.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)  # removing a whole sequence never fails
                keep = 0
            slot.kv = slot.kv[:keep]
        if not slot.kv:
            self._resume(slot, prompt)
        slot.job, slot.used = job, time.monotonic()
        slot.cached = len(slot.kv)
        slot.pending = prompt[len(slot.kv) :]
        slot.last, slot.n = None, 0
        slot.stops = StopMatcher(job.params.stop)
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.logprobs = []
        job.watch = Stopwatch()  # TTFT from the moment the job has a slot (the queue wait is the engine's)

    def _keep(self, slot: Slot) -> None:
        """Before the slot's cells go: its sequence's state into the KV cache (a conversation worth keeping)."""
        cache, held = self._cache, tuple(slot.kv)
        if cache is None or len(held) < MIN_PREFIX or held in cache:
            return
        cache.put(held, read_seq_state(self._lib, self._llm._ctx.ctx, slot.seq))

    def _resume(self, slot: Slot, prompt: list[int]) -> None:
        """Restore into the (empty) slot the cached state that shares the longest start with ``prompt``, cut
        to that start and at least one token short of the prompt (its logits are not kept); else leave it empty."""
        if self._cache is None or (match := self._cache.best_match(prompt)) is None:
            return
        tokens, shared = match
        state = self._cache.get(tokens)
        if state is None:
            return
        if not write_seq_state(self._lib, self._llm._ctx.ctx, state, slot.seq):
            log.warning("a cached KV state of %d tokens did not load; the prompt is read in full", len(tokens))
            self._lib.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
            return
        keep = min(shared, len(prompt) - 1)
        self._lib.llama_memory_seq_rm(self._memory, slot.seq, keep, -1)
        slot.kv = list(tokens[:keep])

    def _step(self, running: list[Slot]) -> None:
        """A chunk of each prompt with more than one token still to read (each in a decode of its own, first
        come first read), then one ``llama_decode`` of one token per sequence: each generating slot's last
        token and the last token of each prompt that has only that one left (a repeated or extended prompt:
        the rest was in its slot). Sampling follows wherever logits are due."""
        for slot in running:
            if slot.job.cancel.cancelled:
                self._finish(slot, "cancelled")
        for slot in sorted((s for s in running if s.job is not None and len(s.pending) > 1), key=lambda s: s.used):
            self._decode([slot], prompt=True)
        rows = [s for s in running if s.job is not None and (s.last is not None or len(s.pending) == 1)]
        if rows:
            self._decode(rows, prompt=False)

    def _decode(self, slots: list[Slot], prompt: bool) -> None:
        """``prompt``: a chunk of the one slot's prompt; else one token of each slot (its last sampled token, or
        its prompt's one remaining token), each row computed as in a lone run (see ``extra_buffer_types``)."""
        batch = self._batch
        batch.n_tokens = 0
        want: list[tuple[Slot, int]] = []  # (slot, index of its logits in the batch)

        def add(slot: Slot, token: int, logits: bool) -> None:
            i = batch.n_tokens
            batch.token[i] = token
            batch.pos[i] = len(slot.kv)
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = slot.seq
            batch.logits[i] = logits
            batch.n_tokens = i + 1
            slot.kv.append(token)
            if logits:
                want.append((slot, i))

        if prompt:
            slot = slots[0]
            chunk, slot.pending = slot.pending[: self._n_batch], slot.pending[self._n_batch :]
            for j, token in enumerate(chunk):
                add(slot, token, not slot.pending and j == len(chunk) - 1)
        else:
            for slot in slots:
                if slot.last is None:
                    add(slot, slot.pending.pop(), True)
                else:
                    add(slot, slot.last, True)
                    slot.last = None
        rc = self._lib.llama_decode(self._llm._ctx.ctx, batch)
        if rc != 0:  # the caller ends the jobs of this step and clears their sequences
            raise GenerationError(f"llama_decode returned {rc}" + (" (the KV cache is full)" if rc == 1 else ""))
        for slot, index in want:
            self._sampled(slot, index)

    def _sampled(self, slot: Slot, index: int) -> None:
        job = slot.job
        params = job.params
        token = self._lib.llama_sampler_sample(job.sampler.sampler, self._llm._ctx.ctx, index)
        if job.cancel.cancelled:
            return self._finish(slot, "cancelled")
        if self._is_eog(token) and not params.ban_eos_token:
            return self._finish(slot, "stop")
        slot.n += 1
        job.watch.mark_token()
        piece = self._llm.detokenize([token], special=True)
        if params.logprobs >= 0:
            slot.logprobs.append(self._logprobs(index, token, piece, params.logprobs))
        text = slot.stops.feed(slot.decoder.decode(piece))
        if text:
            job.out.put(Chunk(text, logprobs=slot.logprobs or None))
            slot.logprobs = []
        if slot.stops.stopped:
            return self._finish(slot, "stop")
        if slot.n >= job.budget:
            return self._finish(slot, "length")
        slot.last = token

    def _finish(self, slot: Slot, finish: str = "stop", error: Exception | None = None) -> None:
        job, slot.job = slot.job, None
        if job is None:
            return
        if error is not None:
            self._lib.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
            slot.kv = []
            job.out.put(error)
            return
        if slot.stops is not None and not slot.stops.stopped:
            tail = slot.stops.feed(slot.decoder.decode(b"", final=True)) + slot.stops.flush()
            if tail:
                job.out.put(Chunk(tail, logprobs=slot.logprobs or None))
        usage = job.watch.usage(len(job.prompt), slot.n)
        usage.cached_tokens = slot.cached
        job.out.put(Chunk(finish_reason=finish, usage=usage))
        job.out.put(_END)
