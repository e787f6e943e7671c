"""Continuous batching: the requests a loaded model serves at once share one ``llama_decode`` a step.

A model's context holds ``num_parallel`` sequences (llama.cpp sequence ids), one per :class:`Slot`.
Each :meth:`Batcher.step` builds one ``llama_batch`` with the next token of every sequence that is
generating, fills what room is left with a chunk of a new request's prompt (so a long prompt
delays the others by one chunk a step, never by its whole length), decodes it once, and samples
each sequence's token from its own row of logits with its own sampler chain (options, seed,
grammar). Stop sequences, logprobs, ``num_predict`` and the context shift are per sequence.

A finished or cancelled request frees its slot at once; its tokens stay in the slot's cells, so the
next request that continues them (a chat's next turn, the same request again) is given that slot
and evaluates only what is new. A request that shares only a start with another slot (the same
system prompt, another user) takes a slot of its own and copies that start's cells from the other
slot, busy or free, instead of evaluating it again. ``DoneEvent.cached_tokens`` says how much of
the prompt came from the cache (``DoneEvent.evaluated_tokens`` the rest).

Everything here runs on the model's engine thread (``runtime.engine``): llama.cpp's CPU backend
slows down when called from more than one thread (performance-notes.md)."""

from __future__ import annotations

import codecs
import collections
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.generation import (
    TOO_LONG,
    BadInput,
    DoneEvent,
    EngineError,
    MediaPrompt,
    Sampling,
    TokenEvent,
    find_stop,
    fit,
    keep_count,
    stop_prefix_len,
)

Emit = Callable[[TokenEvent | DoneEvent | BaseException], None]


class Sequence:
    """One request in the batch: its prompt, its sampler and what it has produced so far."""

    def __init__(
        self, request: list[int] | MediaPrompt, sampling: Sampling, cancel: Any, emit: Emit, submitted: int = 0
    ) -> None:
        self.request = request
        self.s = sampling
        self.cancel = cancel  # a threading.Event (or anything with is_set): the reader went away
        self.emit = emit
        self.start = submitted or time.perf_counter_ns()
        self.prompt: list[int] = []  # as evaluated: cut to fit, image positions as -1
        self.todo: list[int] = []  # prompt tokens still to evaluate
        self.cached = 0  # prompt tokens found in the slot's cells
        self.sampler: Any = None
        self.next: int | None = None  # the token sampled last, decoded at the next step
        self.keep = 0
        self.limit: float = math.inf
        self.generated: list[int] = []
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""  # text held back while it may be the start of a stop sequence
        self.first = 0


@dataclass
class Slot:
    """One sequence id of the context and the tokens its cells hold, in position order."""

    id: int
    tokens: list[int] = field(default_factory=list)
    seq: Sequence | None = None
    used: int = 0  # when it was last given out (the least recent is reused first)
    prompt: int = 0  # the length of the last prompt evaluated here
    # The last text prompt evaluated here and the logits it ended with: the same request again
    # samples from these instead of decoding its last token again, which would give logits that
    # differ in the last bits (another batch shape), so the same request answers the same.
    saved: tuple[list[int], Any] | None = None


class Batcher:
    """The decode loop of one loaded model (``llm``: a ``llama_cpp.Llama`` whose context holds
    ``n_slots`` sequences of ``n_ctx`` tokens each)."""

    def __init__(self, llm: Any, n_slots: int, n_ctx: int, vision: Any = None) -> None:
        import llama_cpp

        self.llm = llm
        self.ctx = llm._ctx.ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
        self.n_vocab = int(llm.n_vocab())
        self.n_ctx = n_ctx
        self.n_batch = int(llm.n_batch)
        self.can_shift = bool(llama_cpp.llama_memory_can_shift(self.memory))
        self.n_swa = int(llama_cpp.llama_model_n_swa(llm._model.model))  # 0: no sliding window
        # Copying a prefix from another slot moves that slot's whole sequence (llama.cpp copies
        # across streams no less): n_ctx cells, each far cheaper than evaluating a token, so a
        # copy pays off from a few tokens on; below this many shared tokens they are evaluated.
        self.min_copy = max(16, n_ctx // 256)
        self.vision = vision
        self.slots = [Slot(i) for i in range(n_slots)]
        self.waiting: collections.deque[Sequence] = collections.deque()
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._given = 0
        self.steps = 0  # llama_decode calls made (tests and benchmarks read it)

    def close(self, reason: str = "the model was unloaded") -> None:
        import llama_cpp

        for seq in [s.seq for s in self.slots if s.seq is not None] + list(self.waiting):
            seq.emit(EngineError(reason))
        self.waiting.clear()
        for slot in self.slots:
            slot.seq = None
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None

    @property
    def active(self) -> bool:
        return bool(self.waiting) or any(s.seq is not None for s in self.slots)

    def submit(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    # -- one step ----------------------------------------------------------------------------------

    def step(self) -> None:
        """Admit waiting requests into free slots, then decode one batch and sample from it."""
        for slot in self.slots:
            if slot.seq is not None and slot.seq.cancel.is_set():
                self._finish(slot, "cancel")
        for seq in [s for s in self.waiting if s.cancel.is_set()]:
            self.waiting.remove(seq)
            self._done(seq, "cancel")
        while self.waiting:
            free = self._slot_for(self.waiting[0])
            if free is None:
                break
            seq = self.waiting.popleft()
            try:
                self._admit(seq, free)
            except BaseException as e:
                self._fail(free, e)
        try:
            self._decode()
        except BaseException as e:  # the context's state is unknown: start every sequence afresh
            for slot in self.slots:
                if slot.seq is not None:
                    self._fail(slot, e)
                self._clear(slot)

    def _slot_for(self, seq: Sequence) -> Slot | None:
        """The free slot ``seq`` continues (the one sharing the most with it), else the least
        recently used free one; None when all are taken.

        ``seq`` continues a slot when it starts with the slot's whole last prompt (a chat's next
        turn, the same request again) or with at least half of its cells (as llama.cpp's server
        chooses): taking a slot that holds another conversation would drop that one's cache for
        a shared start, which :meth:`_borrow` copies into the slot taken instead."""
        free = [s for s in self.slots if s.seq is None]
        if not free:
            return None
        tokens = seq.request if isinstance(seq.request, list) else []
        shared = {s.id: _common(s.tokens, tokens) for s in free}
        mine = [s for s in free if shared[s.id] >= min(s.prompt or len(s.tokens), len(s.tokens) / 2)]
        if mine:
            return max(mine, key=lambda s: (shared[s.id], -s.used))
        return min(free, key=lambda s: s.used)

    def _admit(self, seq: Sequence, slot: Slot) -> None:
        import llama_cpp

        s = seq.s
        self._given += 1
        slot.seq, slot.used = seq, self._given
        seq.keep = keep_count(s.num_keep, self.n_ctx)
        seq.limit = s.num_predict if s.num_predict >= 0 else math.inf
        if isinstance(seq.request, MediaPrompt):
            self._clear(slot)
            seq.prompt = self._evaluate_media(seq.request, slot)
            slot.tokens = list(seq.prompt)
        else:
            request = seq.request
            if any(t < 0 or t >= self.n_vocab for t in request):
                raise BadInput("the context holds tokens this model does not have")
            if len(request) > self.n_ctx and not s.truncate:
                raise BadInput(TOO_LONG)
            seq.prompt = fit(request, self.n_ctx, seq.keep, s.num_predict)
            if not seq.prompt:
                raise BadInput("the prompt is empty")
            shared = self._borrow(slot, seq.prompt)
            if slot.saved is not None and slot.saved[0] == seq.prompt and shared == len(seq.prompt):
                same = len(seq.prompt)  # all of it, and its logits
            else:  # at least the last token is evaluated again: sampling needs its logits
                same = min(shared, len(seq.prompt) - 1)
            if same and not self._holds(slot, same):
                self._clear(slot)
                same = 0
            if same < len(slot.tokens) and not llama_cpp.llama_memory_seq_rm(self.memory, slot.id, same, -1):
                self._clear(slot)  # this memory cannot drop a tail: start over
                same = 0
            del slot.tokens[same:]
            seq.cached = same
            seq.todo = seq.prompt[same:]
        slot.prompt = len(seq.prompt)
        llm = self.llm
        # The sampler chain reads the seed and the penalty window from the Llama object.
        llm.set_seed(s.seed if s.seed >= 0 else random.randrange(2**31))
        llm.last_n_tokens_size = self.n_ctx if s.repeat_last_n < 0 else s.repeat_last_n
        grammar = None
        if s.grammar:
            from llama_cpp.llama_grammar import LlamaGrammar

            grammar = LlamaGrammar.from_string(s.grammar, verbose=False)
        # One sampler for the whole reply: a context shift must not restart the grammar.
        seq.sampler = llm._init_sampler(
            top_k=s.top_k,
            top_p=s.top_p,
            min_p=s.min_p,
            typical_p=s.typical_p,
            temp=s.temperature,
            repeat_penalty=s.repeat_penalty,
            frequency_penalty=s.frequency_penalty,
            presence_penalty=s.presence_penalty,
            grammar=grammar,
        )
        if seq.limit == 0:
            self._finish(slot, "length")
        elif isinstance(seq.request, MediaPrompt):
            self._sample(slot, -1)  # the image prompt was decoded on its own: its logits are the last
        elif not seq.todo and slot.saved is not None:
            self._sample(slot, -1, slot.saved[1])

    def _borrow(self, slot: Slot, prompt: list[int]) -> int:
        """Copy into ``slot`` the cells of the longest start of ``prompt`` another slot holds
        (busy or free: a busy one's cells are all decoded between steps), when that is at least
        ``min_copy`` tokens more than ``slot`` holds itself. How many of ``prompt``'s first tokens
        ``slot`` holds then."""
        import llama_cpp

        own = _common(slot.tokens, prompt)
        others = [s for s in self.slots if s is not slot]
        if not others:
            return own
        best = max(others, key=lambda s: _common(s.tokens, prompt))
        # The last prompt token is evaluated again whatever is cached (its logits are needed).
        n = min(_common(best.tokens, prompt), len(prompt) - 1)
        if n - own < self.min_copy or not self._holds(best, n):
            return own
        # Sequences have streams of their own (not unified): llama.cpp copies a whole sequence
        # across streams, never a range of it, so copy all of it and drop the tail.
        llama_cpp.llama_memory_seq_rm(self.memory, slot.id, -1, -1)
        llama_cpp.llama_memory_seq_cp(self.memory, best.id, slot.id, -1, -1)
        slot.tokens = best.tokens[:n]
        slot.saved = None
        if not llama_cpp.llama_memory_seq_rm(self.memory, slot.id, n, -1):
            self._clear(slot)  # this memory cannot drop a tail (recurrent): start over
            return 0
        return n

    def _holds(self, slot: Slot, n: int) -> bool:
        """Whether ``slot``'s cells can serve its first ``n`` tokens as a prefix: a model with a
        sliding window keeps only that window's cells of a long sequence, and the next token
        needs the window before position ``n`` (llama.cpp's server checks the same)."""
        import llama_cpp

        return int(llama_cpp.llama_memory_seq_pos_min(self.memory, slot.id)) <= max(0, n - self.n_swa)

    def _decode(self) -> None:
        import llama_cpp

        batch = self._batch
        n = 0
        outputs: list[tuple[Slot, int]] = []
        for slot in self.slots:
            seq = slot.seq
            if seq is None or seq.next is None:
                continue
            _put(batch, n, seq.next, len(slot.tokens), slot.id, True)
            outputs.append((slot, n))
            slot.tokens.append(seq.next)
            seq.next = None
            n += 1
        # What room is left goes to prompts, oldest request first, one chunk of each.
        for slot in sorted((s for s in self.slots if s.seq is not None and s.seq.todo), key=lambda s: s.used):
            room = self.n_batch - n
            if room <= 0:
                break
            seq = slot.seq
            assert seq is not None
            chunk, seq.todo = seq.todo[:room], seq.todo[room:]
            for i, token in enumerate(chunk):
                last = not seq.todo and i == len(chunk) - 1
                _put(batch, n, token, len(slot.tokens), slot.id, last)
                if last:
                    outputs.append((slot, n))
                slot.tokens.append(token)
                n += 1
        if n == 0:
            return
        batch.n_tokens = n
        status = llama_cpp.llama_decode(self.ctx, batch)
        self.steps += 1
        if status != 0:
            raise EngineError(f"llama_decode failed ({status}): the context has no room for the batch")
        for slot, index in outputs:
            if slot.seq is not None:
                try:
                    self._sample(slot, index)
                except Exception as e:  # this sequence's fault (a test fault, a grammar): the others go on
                    self._fail(slot, e)

    def _decode_alone(self, slot: Slot, tokens: list[int], pos: int) -> None:
        """Decode ``tokens`` into ``slot``'s sequence in a batch of their own (an image prompt's
        text), logits for the last one."""
        import llama_cpp

        batch = self._batch
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            for i, token in enumerate(chunk):
                _put(batch, i, token, pos + start + i, slot.id, start + i == len(tokens) - 1)
            batch.n_tokens = len(chunk)
            status = llama_cpp.llama_decode(self.ctx, batch)
            if status != 0:
                raise EngineError(f"llama_decode failed ({status})")

    # -- a sequence's tokens -----------------------------------------------------------------------

    def _sample(self, slot: Slot, index: int, saved: Any = None) -> None:
        """Sample ``slot``'s next token from row ``index`` of the logits (or from ``saved``
        ones) and pass it on."""
        import llama_cpp
        import numpy as np

        seq = slot.seq
        assert seq is not None
        s = seq.s
        logits: Any = saved
        if not seq.first and not isinstance(seq.request, MediaPrompt) and saved is None:
            logits = self._logits(index).copy()  # the prompt's: kept for the same request again
            slot.saved = (list(seq.prompt), logits)
        if saved is not None:
            token = _sample_from(seq.sampler.sampler, saved)
        else:
            token = int(llama_cpp.llama_sampler_sample(seq.sampler.sampler, self.ctx, index))
        if not seq.first:
            seq.first = time.perf_counter_ns()
        if seq.cancel.is_set():
            return self._finish(slot, "cancel")
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            return self._finish(slot, "stop")
        if 0 <= s.fail_after <= len(seq.generated):
            raise EngineError(f"test fault: the engine failed after {len(seq.generated)} tokens")
        if s.logprobs:
            logprob = self._logprob(
                token, np.asarray(logits) if logits is not None else self._logits(index), s.top_logprobs
            )
        else:
            logprob = None
        # The tokens before this one (a few suffice) let SentencePiece pieces decode their spaces.
        generated = seq.generated
        previous = generated[-8:] if len(generated) >= 8 else [t for t in seq.prompt[-8:] if t >= 0] + generated
        generated.append(token)
        seq.pending += seq.decoder.decode(self.llm.detokenize([token], prev_tokens=previous[-8:]))
        if s.stop:
            cut = find_stop(seq.pending, s.stop)
            if cut is not None:
                seq.pending = seq.pending[:cut]
                return self._finish(slot, "stop")
            held = stop_prefix_len(seq.pending, s.stop)
            ready, seq.pending = seq.pending[: len(seq.pending) - held], seq.pending[len(seq.pending) - held :]
        else:
            ready, seq.pending = seq.pending, ""
        if ready or logprob is not None:
            seq.emit(TokenEvent(ready, logprob))
        if len(generated) >= seq.limit:
            return self._finish(slot, "length")
        if len(slot.tokens) >= self.n_ctx and not (s.shift and self._shift(slot, seq.keep)):
            return self._finish(slot, "length")  # the context is full (Ollama's shift: false)
        seq.next = token

    def _shift(self, slot: Slot, keep: int) -> bool:
        """Make room in a full sequence as Ollama does: drop the older half of the tokens after
        the first ``keep`` and move the rest down. False when the model's memory cannot shift."""
        import llama_cpp

        n = len(slot.tokens)
        discard = max(1, (n - keep) // 2)
        if not self.can_shift or not llama_cpp.llama_memory_seq_rm(self.memory, slot.id, keep, keep + discard):
            return False
        llama_cpp.llama_memory_seq_add(self.memory, slot.id, keep + discard, n, -discard)
        del slot.tokens[keep : keep + discard]
        slot.saved = None
        return True

    def _finish(self, slot: Slot, reason: str) -> None:
        seq = slot.seq
        slot.seq = None
        if seq is not None:
            seq.todo = []  # a cancelled prompt is not evaluated further; its cells stay for reuse
            self._done(seq, reason)

    def _done(self, seq: Sequence, reason: str) -> None:
        tail = seq.pending + seq.decoder.decode(b"", final=True)
        if tail:
            seq.emit(TokenEvent(tail))
        end = time.perf_counter_ns()
        first = seq.first or end
        context = [t for t in seq.prompt if t >= 0] + seq.generated  # image positions cannot be sent back
        seq.emit(
            DoneEvent(reason, len(seq.prompt), len(seq.generated), first - seq.start, end - first, context, seq.cached)
        )

    def _fail(self, slot: Slot, error: BaseException) -> None:
        seq, slot.seq = slot.seq, None
        self._clear(slot)
        if seq is not None:
            seq.emit(error)

    def _clear(self, slot: Slot) -> None:
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self.memory, slot.id, -1, -1)
        slot.tokens = []
        slot.prompt = 0
        slot.saved = None

    def _evaluate_media(self, request: MediaPrompt, slot: Slot) -> list[int]:
        from runtime.vision import BadImage

        if self.vision is None:
            raise BadInput("this model has no projector to read images with")
        try:
            return list(
                self.vision.evaluate(
                    self.ctx,
                    request.text,
                    request.images,
                    slot.id,
                    self.n_ctx,
                    self.n_batch,
                    lambda tokens, pos: self._decode_alone(slot, tokens, pos),
                )
            )
        except BadImage as e:
            self._clear(slot)
            raise BadInput(str(e)) from None

    def _logits(self, index: int) -> Any:
        """Row ``index`` of the last decode's logits (a view: copy it to keep it)."""
        import llama_cpp
        import numpy as np

        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))

    def _logprob(self, token: int, row: Any, top: int) -> dict[str, Any]:
        import numpy as np

        llm = self.llm
        logits = row.astype(np.float64)
        shifted = logits - logits.max()
        logprobs = shifted - math.log(float(np.exp(shifted).sum()))

        def entry(t: int) -> dict[str, Any]:
            text = llm.detokenize([t], special=True)
            return {"token": text.decode(errors="replace"), "logprob": float(logprobs[t]), "bytes": list(text)}

        out = entry(token)
        if top > 0:
            best = np.argpartition(-logprobs, min(top, self.n_vocab - 1))[:top]
            out["top_logprobs"] = [entry(int(t)) for t in sorted(best, key=lambda t: -logprobs[t])]
        return out


def _sample_from(sampler: Any, logits: Any) -> int:
    """What ``llama_sampler_sample`` does, from logits kept aside rather than the context's."""
    import ctypes

    import llama_cpp
    import numpy as np

    n = len(logits)
    data = np.empty(n, dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True))
    data["id"] = np.arange(n, dtype=np.intc)
    data["logit"] = logits
    data["p"] = 0.0
    array = llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=n, selected=-1, sorted=False
    )
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
    token = int(array.data[array.selected].id)
    llama_cpp.llama_sampler_accept(sampler, token)
    return token


def _put(batch: Any, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = logits


def _common(a: list[int], b: list[int]) -> int:
    """The length of the prefix ``a`` and ``b`` share (image positions, -1, never match)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y or x < 0:
            break
        n += 1
    return n
