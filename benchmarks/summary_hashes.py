"""The SHA-256 of every summary the extractive summarizer writes in a LoCoMo replay.

To show that two versions of the summarizer fold the same: each LoCoMo conversation
(``locomo-sample.json``, read from ``../shared/data/`` next to the repository, or
``--data``) is replayed through prepare() with the extractive summarizer and folds on
the request path, as ``benchmarks/locomo_questions.py`` replays it; every summary is
hashed in the order written (each fold's starts from the one before). Run it with the
package of each checkout and compare the lines::

    PYTHONPATH=. python benchmarks/summary_hashes.py
    PYTHONPATH=/tmp/before python benchmarks/summary_hashes.py
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

from context_trimmer import ExtractiveSummarizer, SummaryRequest, SummaryResult, Trimmer
from context_trimmer._jobs.replay import load_conversations, replay

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo-sample.json"


class Hashing(ExtractiveSummarizer):
    """The extractive summarizer, hashing what it writes."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.summaries = 0

    def summarize(self, request: SummaryRequest) -> SummaryResult:
        result = super().summarize(request)
        self.digest.update(result.text.encode() + b"\0")
        self.summaries += 1
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    total, count = hashlib.sha256(), 0
    for conversation in load_conversations(args.data):
        summarizer = Hashing()
        with (
            tempfile.TemporaryDirectory() as folder,
            Trimmer(f"sqlite:///{folder}/hash.db", summarizer=summarizer, background=False) as t,
        ):
            replay(t, [conversation])
        digest = summarizer.digest.hexdigest()
        print(f"{conversation.id}: {summarizer.summaries} summaries, sha256 {digest[:16]}")
        total.update(bytes.fromhex(digest))
        count += summarizer.summaries
    print(f"all: {count} summaries, sha256 {total.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
