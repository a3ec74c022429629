"""The public surface: one sorted __all__, every name importable and documented."""

from __future__ import annotations

import context_trimmer


def test_all_is_sorted_and_complete() -> None:
    names = context_trimmer.__all__
    assert names == sorted(names)
    public = {n for n in vars(context_trimmer) if not n.startswith("_")} - {"annotations"}
    modules = {n for n in public if type(getattr(context_trimmer, n)).__name__ == "module"}
    assert set(names) - {"__version__"} == public - modules


def test_every_public_name_has_a_docstring() -> None:
    for name in context_trimmer.__all__:
        if name != "__version__":
            assert getattr(context_trimmer, name).__doc__, name
