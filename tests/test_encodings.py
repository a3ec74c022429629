"""tiktoken encodings load with no network, from the bundled copy, hash-checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiktoken

from context_trimmer import EncodingUnavailableError
from context_trimmer._text import encodings as _encodings


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    _encodings.get_encoding.cache_clear()
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    return tmp_path / "cache"


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_loads_into_an_empty_cache_without_network(fresh_cache: Path, name: str) -> None:
    encoding = _encodings.get_encoding(name)
    assert encoding.decode(encoding.encode_ordinary("hello world")) == "hello world"
    cached = _encodings.cache_path(name)
    assert cached is not None and cached.parent == fresh_cache and cached.exists()


def test_a_corrupt_cache_file_is_replaced(fresh_cache: Path) -> None:
    target = _encodings.cache_path("o200k_base")
    assert target is not None
    target.parent.mkdir(parents=True)
    target.write_bytes(b"garbage")
    _encodings.get_encoding("o200k_base")
    assert target.stat().st_size > 1_000_000


def test_disabled_cache_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    _encodings.get_encoding.cache_clear()
    with pytest.raises(EncodingUnavailableError, match="TIKTOKEN_CACHE_DIR"):
        _encodings.get_encoding("o200k_base")
    _encodings.get_encoding.cache_clear()


def test_unwritable_cache_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(blocker / "cache"))
    _encodings.get_encoding.cache_clear()
    with pytest.raises(EncodingUnavailableError, match="Set TIKTOKEN_CACHE_DIR"):
        _encodings.get_encoding("cl100k_base")
    _encodings.get_encoding.cache_clear()
