"""context-trimmer as a LiteLLM proxy callback (see config.yaml beside this file).

    pip install '.[litellm]' 'litellm[proxy]'     # from the checkout
    cd examples/litellm && OPENAI_API_KEY=... litellm --config config.yaml

Every chat completion through the proxy is trimmed before it is sent (summary, recent
turns, max_tokens by the policy) and its usage recorded. The store is
$CONTEXT_TRIMMER_DB (default: the local SQLite file); a request's
``metadata.conversation_id`` names its conversation.
"""

from __future__ import annotations

from context_trimmer import Trimmer
from context_trimmer.integrations.litellm import TrimmerHook

trimmer_hook = TrimmerHook(Trimmer(keep_last=20))
