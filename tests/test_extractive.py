"""The local summarizer: deterministic, within budget, keeps facts over small talk."""

from __future__ import annotations

from context_trimmer import ExtractiveSummarizer, SummaryRequest
from context_trimmer._extractive import facts_of, parse_summary, render_facts
from context_trimmer._tokens import counter_for

COUNT = counter_for("gpt-4o").text
TRANSCRIPT = "\n".join(
    [
        "user: [8 May, 2023] Caroline: Hey Mel! How are you?",
        "assistant: Melanie: Wow, that is so awesome! I'm so happy for you.",
        "user: Caroline: I went to the LGBTQ support group yesterday - it was powerful.",
        "assistant: Melanie: Last Friday I took my 3 kids to a pottery workshop in Portland.",
        "user: Caroline: My grandma in Sweden gave me this necklace when I was 10.",
    ]
)


def summarize(previous: str | None, transcript: str, budget: int = 200) -> str:
    return (
        ExtractiveSummarizer().summarize(SummaryRequest(previous, transcript, budget, COUNT)).text
    )


def test_keeps_names_numbers_and_events_not_small_talk() -> None:
    text = summarize(None, TRANSCRIPT)
    assert "Caroline: " in text and "Melanie: " in text
    for fact in ("pottery workshop in Portland", "3 kids", "Sweden", "LGBTQ support group"):
        assert fact in text
    assert "How are you" not in text and "so happy for you" not in text


def test_same_input_same_output() -> None:
    assert summarize(None, TRANSCRIPT) == summarize(None, TRANSCRIPT)


def test_budget_is_respected_including_speaker_labels() -> None:
    for budget in (12, 25, 40):
        assert COUNT(summarize(None, TRANSCRIPT, budget)) <= budget


def test_rolling_summary_keeps_previous_facts_when_there_is_room() -> None:
    first = summarize(None, TRANSCRIPT)
    second = summarize(first, "user: Caroline: I adopted a dog named Oscar in June 2023.")
    assert "Oscar" in second
    assert "Sweden" in second


def test_summary_format_round_trips() -> None:
    facts = facts_of(TRANSCRIPT)
    assert parse_summary(render_facts(facts)) == facts


def test_deterministic_across_hash_seeds() -> None:
    import os
    import subprocess
    import sys

    script = (
        "from test_extractive import summarize, TRANSCRIPT; "
        "print(summarize(None, TRANSCRIPT * 3, 60))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(__file__),
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1
