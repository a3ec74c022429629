"""context-trimmer: make every OpenAI chat request lighter.

Stores conversation history in SQL and, before each call, replaces older turns with a
rolling summary, keeps the last messages verbatim, sets ``max_tokens`` and records a
token savings report.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from ._client.retry import RetryPolicy
    from ._client.upstreams import CoolDown, Upstream
    from ._exceptions import (
        ConfigurationError,
        EncodingUnavailableError,
        InvalidMessagesError,
        PromptTooLargeError,
        QuotaExceeded,
        RateLimitBudgetExceeded,
        StoreError,
        SummarizerError,
        TrimmerError,
    )
    from ._models import ModelInfo, ModelTable
    from ._options import TrimmerOptions
    from ._prepared import FoldResult, Prepared
    from ._reports.report import Report, ReportRow
    from ._store.keys import GatewayKeys, KeyInfo
    from ._store.ratelimit import RateLimits, UserQuota
    from ._text.compress import Compression, compress_safe
    from ._text.tokens import count_text_tokens, count_tokens
    from ._trimmer import Trimmer
    from ._trimming.breaker import CircuitBreaker
    from ._trimming.extractive import ExtractiveSummarizer
    from ._trimming.summarizers import (
        OpenAISummarizer,
        Summarizer,
        SummaryRequest,
        SummaryResult,
    )
    from ._trimming.system_prompt import PromptRewriter
    from ._validation import validate_messages

_EXPORTS = {
    "CircuitBreaker": "._trimming.breaker",
    "Compression": "._text.compress",
    "ConfigurationError": "._exceptions",
    "CoolDown": "._client.upstreams",
    "EncodingUnavailableError": "._exceptions",
    "ExtractiveSummarizer": "._trimming.extractive",
    "FoldResult": "._prepared",
    "GatewayKeys": "._store.keys",
    "InvalidMessagesError": "._exceptions",
    "KeyInfo": "._store.keys",
    "ModelInfo": "._models",
    "ModelTable": "._models",
    "OpenAISummarizer": "._trimming.summarizers",
    "Prepared": "._prepared",
    "PromptRewriter": "._trimming.system_prompt",
    "PromptTooLargeError": "._exceptions",
    "QuotaExceeded": "._exceptions",
    "RateLimitBudgetExceeded": "._exceptions",
    "RateLimits": "._store.ratelimit",
    "Report": "._reports.report",
    "ReportRow": "._reports.report",
    "RetryPolicy": "._client.retry",
    "StoreError": "._exceptions",
    "Summarizer": "._trimming.summarizers",
    "SummarizerError": "._exceptions",
    "SummaryRequest": "._trimming.summarizers",
    "SummaryResult": "._trimming.summarizers",
    "Trimmer": "._trimmer",
    "TrimmerError": "._exceptions",
    "TrimmerOptions": "._options",
    "Upstream": "._client.upstreams",
    "UserQuota": "._store.ratelimit",
    "compress_safe": "._text.compress",
    "count_text_tokens": "._text.tokens",
    "count_tokens": "._text.tokens",
    "validate_messages": "._validation",
}
"""Each public name and the module that defines it. Names load on first use (PEP 562):
importing the package loads none of SQLAlchemy, the OpenAI SDK or the rest until a name
that needs them is used."""


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'context_trimmer' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__version__ = "0.1.0"

__all__ = [
    "CircuitBreaker",
    "Compression",
    "ConfigurationError",
    "CoolDown",
    "EncodingUnavailableError",
    "ExtractiveSummarizer",
    "FoldResult",
    "GatewayKeys",
    "InvalidMessagesError",
    "KeyInfo",
    "ModelInfo",
    "ModelTable",
    "OpenAISummarizer",
    "Prepared",
    "PromptRewriter",
    "PromptTooLargeError",
    "QuotaExceeded",
    "RateLimitBudgetExceeded",
    "RateLimits",
    "Report",
    "ReportRow",
    "RetryPolicy",
    "StoreError",
    "Summarizer",
    "SummarizerError",
    "SummaryRequest",
    "SummaryResult",
    "Trimmer",
    "TrimmerError",
    "TrimmerOptions",
    "Upstream",
    "UserQuota",
    "__version__",
    "compress_safe",
    "count_text_tokens",
    "count_tokens",
    "validate_messages",
]
