"""The client wrapper: ``trimmer.wrap(openai_client)`` and the send path behind it.

- ``wrapped_client``: the SDK client of its own class with ``post()`` overridden;
  ``calls``: one intercepted call (Chat Completions or Responses, via
  ``responses_api``).
- ``wrap``: prepare, reserve, send with retries, record; ``send_plan``: that plan as a
  generator of effects; ``retry``: backoff with jitter; ``upstreams``: the pool of
  upstreams and their cool-downs; ``failopen``: what happens when the store fails.
- ``streams``: streams that record what they carried; ``relayed`` and ``direct_post``:
  answers as bytes, and the plain POST, for the gateway; ``upstream_url``: the one way
  an upstream URL is built (a normalised path that stays under the base).

May import: ``_trimming``, ``_store``, ``_text`` and the top-level basics.
"""
