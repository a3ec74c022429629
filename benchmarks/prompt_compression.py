"""Token reduction of system-prompt compression on the project's prompt corpus.

Safe mode always; LLM mode too when --base-url (or OPENAI_BASE_URL) names an
OpenAI-compatible endpoint: each rewrite is checked, and rejected ones count as the
safe version (as prepare() would send).

    python benchmarks/prompt_compression.py [--corpus tests/prompts] [--llm --model M]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from context_trimmer import PromptRewriter, compress_safe
from context_trimmer._store.db import Database
from context_trimmer._text.tokens import counter_for
from context_trimmer._trimming.system_prompt import SystemPrompts

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "prompts"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--llm", action="store_true", help="also measure LLM mode")
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args()
    count = counter_for("gpt-4o").text
    prompts = [p.read_text() for p in sorted(args.corpus.glob("*.md"))]
    safe = [1 - count(compress_safe(p)) / count(p) for p in prompts]
    print(f"{len(prompts)} prompts, {sum(map(count, prompts)):,} tokens (o200k_base)")
    print(
        f"safe mode: mean reduction {statistics.mean(safe):.1%}, "
        f"median {statistics.median(safe):.1%}, max {max(safe):.1%}"
    )
    if args.llm:
        with tempfile.TemporaryDirectory() as folder:
            store = Database(f"sqlite:///{folder}/bench.db")
            system = SystemPrompts(
                "llm",
                store=store,
                count=count,
                schedule=lambda w: w(),
                rewriter=PromptRewriter(args.model),
            )
            results = [system.rewrite_now(p) for p in prompts]
            system.close()
            store.close()
        llm = [1 - r.tokens / r.original_tokens for r in results]
        rejected = sum(r.reason is not None for r in results)
        print(
            f"llm mode ({args.model}): mean reduction {statistics.mean(llm):.1%}, "
            f"median {statistics.median(llm):.1%}; {rejected} rewrites rejected"
        )


if __name__ == "__main__":
    main()
