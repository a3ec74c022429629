"""The ``context-trimmer`` command line: one group per noun, verb subcommands.

``_main`` holds the top-level group and the replay, report, tokens and db commands;
``_data`` export, forget and prune; ``_folds`` status and compact; ``_gateway`` keys and
serve; ``_worker`` the fold worker; ``_common`` what they share (``--db``, ``--json``,
one-line errors). The top layer: it may import anything in the package.
"""

from ._main import main

__all__ = ["main"]
