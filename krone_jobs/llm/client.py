"""The one door to the LLM endpoint: bounded in calls, time and failures, and JSON-only.

The nightly scoring run must never wait on, or pay for, a model more than planned. So every call passes a
budget (a cap on calls and on calls per scored session), a per-attempt timeout, a few retries with
exponential backoff and jitter, and a circuit breaker: after a few consecutive failed attempts the
endpoint is left alone for the rest of the run (or a cool-down), so a dead endpoint costs seconds.
Answers must be one JSON object that a caller-supplied validator accepts; anything else is counted and
asked once more, then given up (the caller keeps its own verdict). ``openai`` is imported lazily so DAG
files that import this module stay fast to parse.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from krone_jobs.config import Settings, settings

log = logging.getLogger(__name__)

T = TypeVar("T")
Message = Mapping[str, str]

# Transport outcomes worth another attempt; other 4xx answers will not change by asking again.
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(slots=True)
class Budget:
    """At most ``max_calls`` calls, and at most ``max_fraction`` of the sessions scored so far.

    ``n_sessions`` is ``None`` when the caller scores no sessions (hierarchy extraction): only
    ``max_calls`` applies. The scoring job adds sessions as batches arrive (:meth:`add_sessions`)."""

    max_calls: int
    max_fraction: float = 1.0
    n_sessions: int | None = None

    def limit(self) -> int:
        if self.n_sessions is None:
            return self.max_calls
        return min(self.max_calls, math.floor(self.max_fraction * self.n_sessions))

    def add_sessions(self, n: int) -> None:
        self.n_sessions = (self.n_sessions or 0) + n


@dataclass(slots=True)
class Counters:
    """What ``run_metrics`` records about the LLM for one run."""

    calls: int = 0  # requests charged to the budget (answered or not)
    attempts: int = 0  # HTTP attempts, retries included
    retries: int = 0  # attempts after a failed one
    failures: int = 0  # calls that got no answer (timeout, refused, HTTP error) after retries
    invalid: int = 0  # answers that were not JSON or failed the caller's schema
    budget_refusals: int = 0  # calls not made: budget spent
    breaker_refusals: int = 0  # calls not made: circuit open
    breaker_trips: int = 0  # times the circuit opened
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # wall time spent inside calls, backoff included

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


class LLMError(Exception):
    """One failed attempt; ``retry`` says whether another attempt may help."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class LLMClient:
    """Chat-completions client with budget, timeouts, retries, circuit breaker and token accounting.

    Not thread-safe: one client per run (or per task), shared by the judge and the scoring job."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        budget: Budget | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 4.0,
        breaker_threshold: int = 3,
        breaker_cooldown: float | None = None,
        max_tokens: int = 256,
    ) -> None:
        import openai

        # openai's own retries are off: they would multiply ours and ignore the breaker.
        self._openai = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or "unused",  # self-hosted servers often need none; the SDK insists on one
            timeout=openai.Timeout(timeout, connect=min(connect_timeout, timeout)),
            max_retries=0,
        )
        self.model = model
        self.budget = budget if budget is not None else Budget(max_calls=200)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.breaker_threshold = breaker_threshold
        self.breaker_cooldown = breaker_cooldown
        self.max_tokens = max_tokens
        self.counters = Counters()
        self._consecutive_failures = 0
        self._open_until: float | None = None
        self._plain = False  # set once the server rejected our optional parameters (see _attempt)

    @classmethod
    def from_settings(cls, config: Settings | None = None, *, n_sessions: int | None = None,
                      **options: Any) -> LLMClient | None:
        """The run's client from ``KRONE_LLM_*``, or ``None`` when no endpoint is configured (LLM off)."""
        config = config or settings()
        if not config.llm_base_url or not config.llm_model:
            return None
        budget = Budget(config.llm_max_calls, config.llm_max_fraction, n_sessions)
        return cls(config.llm_base_url, config.llm_model, api_key=config.llm_api_key, budget=budget, **options)

    # ------------------------------------------------------------------------------ public
    @property
    def breaker_open(self) -> bool:
        return self._open_until is not None and time.monotonic() < self._open_until

    def metrics(self) -> dict[str, int | float]:
        """Counters plus the breaker state, for ``run_metrics``."""
        return {**self.counters.as_dict(), "breaker_open": int(self.breaker_open)}

    def ask(self, messages: Sequence[Message], validate: Callable[[Any], T | None], *,
            reminder: str | None = None) -> T | None:
        """An answer that ``validate`` accepts, or ``None`` (budget spent, breaker open, endpoint failed,
        or an invalid answer twice). After an invalid answer the question is asked once more, with
        ``reminder`` appended as a user message; the invalid answer itself is never sent back."""
        for tries in range(2):
            content = self.complete(messages)
            if content is None:
                return None
            answer = validate(parse_json_object(content))
            if answer is not None:
                return answer
            self.counters.invalid += 1
            if reminder and tries == 0:
                messages = [*messages, {"role": "user", "content": reminder}]
        return None

    def complete(self, messages: Sequence[Message]) -> str | None:
        """The answer text of one budgeted call, or ``None`` when refused or failed (all counted)."""
        if self.breaker_open:
            self.counters.breaker_refusals += 1
            return None
        if self.counters.calls >= self.budget.limit():
            self.counters.budget_refusals += 1
            return None
        self.counters.calls += 1
        start = time.monotonic()
        try:
            return self._with_retries(messages)
        finally:
            self.counters.seconds += time.monotonic() - start

    # ----------------------------------------------------------------------------- internals
    def _with_retries(self, messages: Sequence[Message]) -> str | None:
        for attempt in range(self.retries + 1):
            if attempt:
                self.counters.retries += 1
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
            try:
                content = self._attempt(messages)
            except LLMError as err:
                if self._failed(err) or not err.retry:
                    break
                continue
            self._consecutive_failures = 0
            self._open_until = None
            return content
        self.counters.failures += 1
        return None

    def _failed(self, err: LLMError) -> bool:
        """Record a failed attempt; open the breaker at the threshold. True when it is open."""
        self._consecutive_failures += 1
        if self._consecutive_failures >= self.breaker_threshold:
            if not self.breaker_open:
                self.counters.breaker_trips += 1
                log.warning("LLM endpoint failed %d times in a row (last: %s): circuit open %s",
                            self._consecutive_failures, err,
                            "for the rest of the run" if self.breaker_cooldown is None
                            else f"for {self.breaker_cooldown:g} s")
            cooldown = self.breaker_cooldown
            self._open_until = math.inf if cooldown is None else time.monotonic() + cooldown
            return True
        return False

    def _attempt(self, messages: Sequence[Message]) -> str:
        """One HTTP request. A 400 while sending the optional parameters (JSON mode, temperature, token
        cap) is answered by dropping them for the rest of the run and trying once more at once: some
        OpenAI-compatible servers reject what others ignore."""
        import openai

        self.counters.attempts += 1
        extra: dict[str, Any] = {} if self._plain else {
            "response_format": {"type": "json_object"}, "temperature": 0, "max_tokens": self.max_tokens}
        try:
            response = self._openai.chat.completions.create(model=self.model, messages=list(messages), **extra)
        except openai.BadRequestError as err:
            if self._plain:
                raise LLMError("HTTP 400, also without the optional parameters", retry=False) from err
            self._plain = True
            return self._attempt(messages)
        except openai.APIStatusError as err:
            raise LLMError(f"HTTP {err.status_code}", retry=err.status_code in _RETRY_STATUS) from err
        except (openai.APITimeoutError, openai.APIConnectionError) as err:
            raise LLMError(type(err).__name__, retry=True) from err
        except (openai.OpenAIError, ValueError) as err:  # a body that is not JSON (a proxy's HTML page...)
            raise LLMError(f"malformed response: {type(err).__name__}", retry=False) from err
        usage = getattr(response, "usage", None)  # absent on some servers: nothing to count
        self.counters.prompt_tokens += _count(getattr(usage, "prompt_tokens", 0))
        self.counters.completion_tokens += _count(getattr(usage, "completion_tokens", 0))
        # Servers differ: a missing piece is an empty (hence invalid) answer, never an exception.
        choices = getattr(response, "choices", None) or [None]
        content = getattr(getattr(choices[0], "message", None), "content", None)
        return content if isinstance(content, str) else ""


def _count(value: Any) -> int:
    """A token count as reported, 0 when the server sends none or nonsense."""
    return value if isinstance(value, int) and value > 0 else 0


def parse_json_object(content: str) -> dict[str, Any] | None:
    """The JSON object in an answer, tolerating servers that ignore JSON mode (code fences, a sentence
    before the object). ``None`` when there is no object."""
    text = content.strip()
    try:
        value = json.loads(text)
    except ValueError:
        start = text.find("{")
        if start < 0:
            return None
        try:
            value, _ = json.JSONDecoder().raw_decode(text, start)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None
