"""context-trimmer: make every OpenAI chat request lighter.

Stores conversation history in SQL and, before each call, replaces older turns with a
rolling summary, keeps the last messages verbatim, sets ``max_tokens`` and records a
token savings report.
"""

from ._breaker import CircuitBreaker
from ._compress import Compression, compress_safe
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
from ._extractive import ExtractiveSummarizer
from ._keys import GatewayKeys, KeyInfo
from ._models import ModelInfo, ModelTable
from ._options import TrimmerOptions
from ._prepared import FoldResult, Prepared
from ._ratelimit import RateLimits, UserQuota
from ._report import Report, ReportRow
from ._retry import RetryPolicy
from ._summarizers import (
    OpenAISummarizer,
    Summarizer,
    SummaryRequest,
    SummaryResult,
)
from ._system_prompt import PromptRewriter
from ._tokens import count_text_tokens, count_tokens
from ._trimmer import Trimmer
from ._upstreams import CoolDown, Upstream
from ._validation import validate_messages

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
