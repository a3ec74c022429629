"""``python -m context_trimmer.cli``: the same as the ``context-trimmer`` command."""

from ._main import main

main()
