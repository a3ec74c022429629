"""context-trimmer as a LiteLLM proxy callback (see config.yaml beside this file).

From the checkout, with the upstream key in ``$OPENAI_API_KEY``:

    pip install '.[litellm]' 'litellm[proxy]'
    cd examples/litellm && LITELLM_MASTER_KEY=sk-choose-one LITELLM_LOCAL_MODEL_COST_MAP=True litellm --config config.yaml

Clients then call the proxy (port 4000) with ``Authorization: Bearer sk-choose-one``.
``LITELLM_MASTER_KEY`` is the key the proxy asks its clients for (current LiteLLM
needs one); ``LITELLM_LOCAL_MODEL_COST_MAP=True`` makes LiteLLM read its price table
from the package instead of fetching it at start-up. ``OPENAI_BASE_URL`` points the
proxy (and the summaries) at any OpenAI-compatible server.

Every chat completion through the proxy is trimmed before it is sent (summary, recent
turns, recall, max_tokens by the policy) and its usage recorded. The store is
$CONTEXT_TRIMMER_DB (default: the local SQLite file); a request's
``metadata.conversation_id`` names its conversation.
"""

from __future__ import annotations

from context_trimmer import Trimmer
from context_trimmer.integrations.litellm import TrimmerHook

trimmer_hook = TrimmerHook(Trimmer())  # the library's measured defaults
