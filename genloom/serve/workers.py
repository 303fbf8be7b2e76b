"""The server's workers: one thread per model that owns the network and serves a bounded queue of jobs.

Text jobs are decoded by continuous batching (`lm.batching`): between decoding steps, waiting jobs join
the running batch (up to `max_batch` rows) and finished rows leave it; each row keeps its own sampling
settings, seed, stop strings and token budget, and its text streams back as it is sampled. Image jobs
run one at a time and report the sampler's progress.

A `ModelJob` is any other work on the model (embeddings, loading or unloading a LoRA adapter): the thread
that owns the model runs it between two decoding steps, so nothing else touches the network meanwhile. One
that must not run while some rows decode (unloading the adapter they use) waits until they have left.

Every job carries its deadline (the request's start + the server's timeout). The worker drops a job at its
next step once its client has gone (`cancelled`) or its deadline has passed, so neither a client that leaves
nor one that waits forever keeps a model busy. Work done before a job reaches a worker (chat templates,
tokenizing) runs through `call_with_deadline`, which stops it at the deadline even in an endless loop.
"""

from __future__ import annotations

import ctypes
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..core.errors import GenloomError
from ..lm.batching import ContinuousBatch, Sequence
from ..lm.constraints import TokenConstraint
from ..lm.decoding import Sampling, StopMatcher, TextStream
from ..lm.scoring import score_tokens
from ..nn.lora import adapter_names, lora_modules
from .errors import APIError

__all__ = ["QueueFull", "Overrun", "TextJob", "ScoreJob", "ImageJob", "ModelJob", "TextWorker", "ImageWorker",
           "CallWorker", "call_with_deadline"]

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The model's queue holds `queue_size` jobs already."""


class Overrun(Exception):
    """A job ran past its deadline (the server's timeout)."""


@dataclass
class TextJob:
    """One request: `prompts[i]` token ids decoded with seeds[i]; events go to `emit`."""

    prompts: list[list[int]]
    seeds: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    emit: Callable[[dict], None]          # called from the worker thread with {"row", "text", "token", ...}
    deadline: float = math.inf            # time.monotonic() after which the worker drops the job (Overrun)
    adapter: str | None = None            # the LoRA adapter to decode with (None: the base model)
    top: int = 0                          # each event also carries the `top` likeliest tokens (top_logprobs)
    grammar: str | None = None            # a checked llguidance grammar every row is constrained to
    watermark: Any = None                 # a `watermark.text.TextWatermark` every row is marked with
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    remaining: int = 0                    # rows not finished yet

    def __post_init__(self) -> None:
        self.remaining = len(self.prompts)


@dataclass
class ScoreJob:
    """Score `prompts` (token ids) under the model: one {"result": [TokenScores, ...]} event, run by the text
    worker between two decoding steps."""

    prompts: list[list[int]]
    top: int
    emit: Callable[[dict], None]
    deadline: float = math.inf
    adapter: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class ImageJob:
    run: Callable[[Callable[[int, int], None]], Any]   # does the work, given a progress callback
    emit: Callable[[dict], None]
    deadline: float = math.inf
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class ModelJob:
    """`run()` on the worker's thread (between decoding steps for a text worker): one {"result": run()} event.
    `waits_for(rows)` (the batch's rows): True while the job must not run yet."""

    run: Callable[[], Any]
    emit: Callable[[dict], None]
    deadline: float = math.inf
    waits_for: Callable[[list], bool] | None = None
    adapter: str | None = None            # the LoRA adapter `run` uses (refused once it is unloaded)
    prompts: tuple = ()                   # adds no rows to a batch
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)

    def __call__(self) -> None:
        try:
            self.emit({"result": self.run()})
        except Exception as error:  # a failure answers the job; the worker keeps serving
            if not isinstance(error, (APIError, GenloomError)):
                log.exception("a model job failed")
            self.emit({"error": error})


def _overrun(job) -> bool:
    """True (and the job told, once) when `job` has passed its deadline."""
    if time.monotonic() <= job.deadline or job.cancelled.is_set():
        return False
    job.cancelled.set()
    job.emit({"error": Overrun("the job ran past the server's timeout")})
    return True


class _Worker:
    def __init__(self, name: str, queue_size: int):
        self.name = name
        self.jobs: queue.Queue = queue.Queue(maxsize=queue_size)
        self.busy = 0                        # jobs being worked on now
        self._thread = threading.Thread(target=self._loop, name=f"genloom-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting or running."""
        return self.jobs.qsize() + self.busy

    def submit(self, job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull(self.name) from None

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job.cancelled.is_set() or _overrun(job):
                continue
            self.busy = 1
            try:
                self._work(job)
            except Exception as error:  # a failure answers the job; the worker keeps serving
                if not isinstance(error, Overrun):
                    log.exception("model %s failed", self.name)
                job.emit({"error": error})
            finally:
                self.busy = 0

    def _work(self, job) -> None:
        raise NotImplementedError


class TextWorker(_Worker):
    """Continuous batching: waiting jobs join the running batch between decoding steps (up to `max_batch`
    rows), finished, abandoned and overdue rows leave it."""

    def __init__(self, name: str, handle, queue_size: int, max_batch: int):
        self.handle, self.max_batch = handle, max_batch
        self.waiting: list[ModelJob] = []             # model jobs that wait for some rows to leave the batch
        super().__init__(name, queue_size)

    def _take(self, job) -> list[Sequence]:
        """A job from the queue: the rows it adds to the batch (model and score jobs run now, or wait)."""
        if job.cancelled.is_set() or _overrun(job):
            return []
        if isinstance(job, TextJob):
            return self._rows(job)
        if isinstance(job, ModelJob):
            if not self._gone(job):
                self.waiting.append(job)
            return []
        return self._score(job)

    def _run_waiting(self, batch: ContinuousBatch) -> None:
        """Run the model jobs that need not wait for the batch's rows any more (in the order they came)."""
        for job in list(self.waiting):
            if job.waits_for is None or not job.waits_for(batch.rows):
                self.waiting.remove(job)
                if not job.cancelled.is_set() and not _overrun(job):
                    job()
                batch.adapted = any(True for _ in lora_modules(self.handle.model))   # an adapter came or went

    def _admit(self, batch: ContinuousBatch, block: bool) -> None:
        """Move waiting jobs into the batch while their rows fit; with `block` and an empty batch, wait for one."""
        joining: list[Sequence] = []
        if block and not len(batch) and not self.waiting:
            joining += self._take(self.jobs.get())
            time.sleep(0.003)                           # let requests sent together start together
        while True:
            with self.jobs.mutex:
                job = self.jobs.queue[0] if self.jobs.queue else None
            if job is None or (len(batch) + len(joining) + len(job.prompts) > self.max_batch
                               and (len(batch) or joining)):
                break
            joining += self._take(self.jobs.get_nowait())
        batch.add(joining)
        self.busy = len({id(r.owner[0]) for r in batch.rows})

    def _gone(self, job) -> bool:
        """True (and the job answered 404) when the adapter the job names was unloaded after it was accepted."""
        if job.adapter is None or job.adapter in adapter_names(self.handle.model):
            return False
        job.emit({"error": APIError(404, f"the adapter {job.adapter!r} was unloaded", param="model",
                                    code="model_not_found")})
        return True

    def _rows(self, job: TextJob) -> list[Sequence]:
        if self._gone(job):
            return []
        device = self.handle.device
        return [Sequence(list(prompt), job.sampling, torch.Generator(device=device).manual_seed(seed),
                         owner=(job, i, TextStream(self.handle.tokenizer), StopMatcher(job.stop), [0]),
                         adapter=job.adapter, top=job.top,
                         constraint=None if job.grammar is None else
                         TokenConstraint(job.grammar, self.handle.tokenizer, self.handle.model.config.vocab_size),
                         watermark=None if job.watermark is None else job.watermark.marker())
                for i, (prompt, seed) in enumerate(zip(job.prompts, job.seeds))]

    def _score(self, job: ScoreJob) -> list[Sequence]:
        """Score the job's prompts now (between decoding steps); it adds no rows to the batch."""
        if self._gone(job):
            return []
        try:
            job.emit({"result": [score_tokens(self.handle.model, p, job.top, job.adapter) for p in job.prompts]})
        except Exception as error:  # a failure answers the job; the worker keeps serving
            log.exception("model %s failed", self.name)
            job.emit({"error": error})
        return []

    def _loop(self) -> None:
        batch = ContinuousBatch(self.handle.model)
        while True:
            try:
                self._run_waiting(batch)
                self._admit(batch, block=True)
                self._run_waiting(batch)
                if len(batch):
                    tokens, logprobs = batch.step()
                    keep = [self._deliver(row, token, logprob, top)
                            for row, token, logprob, top in zip(batch.rows, tokens, logprobs, batch.top)]
                    batch.remove(keep)
            except Exception as error:  # a failure answers the jobs; the worker keeps serving
                log.exception("model %s failed", self.name)
                for job in {id(r.owner[0]): r.owner[0] for r in batch.rows}.values():
                    job.emit({"error": error})
                batch = ContinuousBatch(self.handle.model)
            if not len(batch):
                self.busy = 0

    @staticmethod
    def _deliver(row: Sequence, token: int, logprob: float, top: list[tuple[int, float]]) -> bool:
        """Send one token's text to its job; False when the row is finished (or its client gone, or its
        deadline passed)."""
        job, i, stream, matcher, count = row.owner
        if job.cancelled.is_set() or _overrun(job):
            return False
        grammar = row.constraint
        ended = grammar is not None and grammar.done             # the grammar is complete: the row ends here
        piece = "" if ended and token == grammar.ended_by else matcher.push(stream.push(token))
        if not matcher.stopped:
            count[0] += 1
        finished = matcher.stopped or ended or count[0] >= job.max_tokens
        if finished and not matcher.stopped:
            piece += matcher.flush()
        reason = ("stop" if matcher.stopped or ended else "length") if finished else None
        job.emit({"row": i, "text": piece, "token": None if matcher.stopped else token, "logprob": logprob,
                  "top": top, "finish_reason": reason})
        if finished:
            job.remaining -= 1
            if job.remaining == 0:
                job.emit({"done": True})
        return not finished


class ImageWorker(_Worker):
    def _work(self, job: ImageJob) -> None:
        def progress(i: int, n: int) -> None:
            if job.cancelled.is_set():
                raise _Cancelled()
            if time.monotonic() > job.deadline:
                raise Overrun("the job ran past the server's timeout")
            job.emit({"progress": i, "total": n})
        try:
            job.emit({"result": job.run(progress)})
        except _Cancelled:
            pass


class _Cancelled(Exception):
    pass


class CallWorker(_Worker):
    """Runs `ModelJob`s one at a time (a model without batching: a sentence encoder)."""

    def _work(self, job: ModelJob) -> None:
        job()


# ----------------------------------------------------------------------------------------------
# A deadline for work that may never end (a checkpoint's chat template, a tokenizer)
# ----------------------------------------------------------------------------------------------

class _Interrupt(BaseException):
    """Raised inside a thread by `call_with_deadline`'s timer (a BaseException: `except Exception` in the
    interrupted code does not swallow it)."""


def _raise_in(thread: int, exception: type[BaseException] | None) -> None:
    """Make `thread` raise `exception` at its next Python instruction (None: forget one not raised yet)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread),
                                               None if exception is None else ctypes.py_object(exception))


def call_with_deadline(fn: Callable[[], Any], deadline: float) -> Any:
    """`fn()` on this thread, raising Overrun if it has not returned by `deadline` (time.monotonic()).

    A timer interrupts the thread at the deadline; the exception lands between two Python instructions, so
    an endless Python loop stops there and a long call into C stops when it returns. The timer is disarmed
    (and an exception it raised but that has not landed yet is withdrawn) before this returns, so nothing
    reaches the caller's later code."""
    if deadline - time.monotonic() < 0.01:
        raise Overrun("the request ran past the server's timeout before its text was prepared")
    thread, lock, state = threading.get_ident(), threading.Lock(), {"armed": True, "fired": False}

    def fire() -> None:
        with lock:
            if state["armed"]:
                state["fired"] = True
                _raise_in(thread, _Interrupt)

    timer = threading.Timer(deadline - time.monotonic(), fire)
    timer.daemon = True
    try:
        try:
            timer.start()
            return fn()
        finally:
            with lock:
                state["armed"] = False
                if state["fired"]:
                    _raise_in(thread, None)
            timer.cancel()
    except _Interrupt:
        raise Overrun("preparing the request (its chat template, its tokens) took longer than the server's "
                      "timeout") from None
