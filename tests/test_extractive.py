"""The local summarizer: deterministic, within budget, keeps dated facts over small talk."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from context_trimmer import ExtractiveSummarizer, SummaryRequest, SummaryResult
from context_trimmer._text.tokens import counter_for
from context_trimmer._trimming.extractive import (
    DATE_WEIGHT,
    FACT_SEPARATOR,
    KEPT_BONUS,
    NOTHING_KEPT,
    SPEAKER_WEIGHT,
    Fact,
    _addressed,
    _content_words,
    _line_tokens,
    _LineCounts,
    _lines_add_up,
    _prior,
    _rarity,
    _select,
    facts_of,
    parse_summary,
    render_facts,
)
from context_trimmer._trimming.summarizers import SummaryRequest as Request
from context_trimmer._trimming.summarizers import fold

COUNT = counter_for("gpt-4o").text
TRANSCRIPT = "\n".join(
    [
        "user: [1:56 pm on 8 May, 2023] Caroline: Hey Mel! How are you?",
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


def test_a_support_chat_keeps_its_problem_and_decisions() -> None:
    transcript = "\n".join(
        [
            "user: Hi, my blender arrived broken. Order 48213.",
            "assistant: Sorry to hear that! I have issued a replacement for order 48213.",
            "user: Great, thanks so much! You are the best.",
            "assistant: You're welcome! Anything else I can help with?",
            "user: We agreed you would also waive the shipping fee, right?",
            "assistant: Yes, the shipping fee is waived.",
        ]
    )
    text = summarize(None, transcript, budget=40)
    for fact in ("blender arrived broken", "replacement for order 48213", "shipping fee"):
        assert fact in text
    assert "Anything else" not in text and "the best" not in text


def test_facts_stand_under_the_date_they_were_said() -> None:
    text = summarize(None, TRANSCRIPT)
    assert text.splitlines()[0] == "[8 May, 2023]"  # the time of day is dropped
    later = "user: Caroline: I adopted a dog named Oscar in June."
    rolled = summarize(text, later + "\nuser: [3 July, 2023] Caroline: Hi there!")
    # The new turn had no date of its own: it belongs to the summary's latest date.
    assert rolled.index("Oscar") < rolled.index("[3 July, 2023]")
    assert rolled.count("[8 May, 2023]") == 1
    # The latest date closes the summary even with no fact kept from it, so the
    # next fold dates its turns right.
    assert rolled.splitlines()[-1] == "[3 July, 2023]"


def test_same_input_same_output() -> None:
    assert summarize(None, TRANSCRIPT) == summarize(None, TRANSCRIPT)


def test_budget_is_respected_including_speaker_labels_and_dates() -> None:
    for budget in (12, 25, 40):
        assert COUNT(summarize(None, TRANSCRIPT, budget)) <= budget


def test_rolling_summary_keeps_previous_facts_when_there_is_room() -> None:
    first = summarize(None, TRANSCRIPT)
    second = summarize(first, "user: Caroline: I adopted a dog named Oscar in June 2023.")
    assert "Oscar" in second
    assert "Sweden" in second


def test_summary_format_round_trips() -> None:
    facts, latest = facts_of(TRANSCRIPT + "\nuser: [9 May, 2023] Caroline: Hi!")
    assert latest == "9 May, 2023"
    assert parse_summary(render_facts(facts, latest)) == (facts, latest)


def test_news_wins_over_replies_to_the_listener() -> None:
    transcript = "\n".join(
        [
            "user: Caroline: You captured the colours of that sunset perfectly, Melanie.",
            "assistant: Melanie: I signed up for a pottery class yesterday.",
        ]
    )
    expected = "Melanie: signed up for a pottery class yesterday"
    assert summarize(None, transcript, budget=12) == expected


def test_priors_rank_news_over_remarks_and_replies() -> None:
    def prior(text: str) -> float:
        return _prior(text, frozenset({"Caroline", "Melanie"}))

    neutral = prior("Melanie painted the lake at sunset")
    reply = prior("You painted the lake at sunset")
    assert prior("You painted the lake at sunset, Melanie") < reply < neutral
    assert prior("It's nice to paint the lake at sunset") < neutral
    ranked = [
        neutral,
        prior("I painted the lake at sunset"),
        prior("I painted the lake at sunset last week"),
        prior("I painted the lake at sunset last week with 2 friends"),
    ]
    assert ranked == sorted(set(ranked))


def test_only_a_speakers_name_after_a_comma_marks_a_reply() -> None:
    speakers = {"Caroline", "Melanie"}
    assert _addressed("That's so true, Mel", speakers)
    assert _addressed("Caroline, I loved it", speakers)
    assert not _addressed("a gift from my grandma in my home country, Sweden", speakers)


def test_every_session_keeps_something() -> None:
    sessions = [
        "user: [1 May, 2023] Ann: I started a pottery class and I made 2 bowls and 3 cups.",
        "user: Ann: I also joined a choir last week and we sang in the cathedral.",
        "user: Ann: We went to Lisbon last month and visited 5 museums in 2 days.",
        "user: [2 June, 2023] Ann: I adopted a cat.",
    ]
    text = summarize(None, "\n".join(sessions), budget=45)
    assert "[1 May, 2023]" in text and "adopted a cat" in text


def test_a_tag_question_is_a_statement() -> None:
    text = summarize(None, "user: Caroline: Sunflowers mean warmth and happiness, right?")
    assert text == "Caroline: Sunflowers mean warmth and happiness"


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


def naive_select(candidates: list[Fact], latest: str, request: SummaryRequest) -> list[int]:
    """The plain O(n^2) greedy the lazy one must match."""
    chosen: list[int] = []
    remaining = set(range(len(candidates)))
    covered: set[str] = set()
    dated = {latest} if latest else set()
    used = COUNT(f"[{latest}]") + 1 if latest else 0
    words = [_select_words(candidates, i) for i in range(len(candidates))]
    weight = _weights(candidates)

    def value(i: int) -> tuple[float, int]:
        gain = math.fsum(weight[w] for w in words[i] if w not in covered)
        return candidates[i].prior * gain / (COUNT(candidates[i].text) + 1), -i

    while remaining:
        best = max(remaining, key=value)
        remaining.discard(best)
        if value(best)[0] == 0:
            break
        date = candidates[best].date
        cost = COUNT(candidates[best].text) + 1
        cost += COUNT(f"[{date}]") + 1 if date and date not in dated else 0
        if used + cost <= request.budget:
            used += cost
            chosen.append(best)
            covered |= words[best]
            dated.add(date)
    return chosen


def _select_words(candidates: list[Fact], i: int) -> set[str]:
    fact = candidates[i]
    words = _content_words(fact.text)
    if fact.date and words:
        words |= {f"[{fact.date}]", f"[{fact.date}] {fact.speaker}"}
    return words


def _weights(candidates: list[Fact]) -> dict[str, float]:
    weight = _rarity([_content_words(fact.text) for fact in candidates])
    for fact in candidates:
        weight[f"[{fact.date}]"] = DATE_WEIGHT
        weight[f"[{fact.date}] {fact.speaker}"] = SPEAKER_WEIGHT
    return weight


WORDS = "Lisbon pottery yesterday 3 kids I you my last week Maria painted flights museum".split()


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from(["Ann", "Bob"]),
            st.lists(st.sampled_from(WORDS), min_size=3, max_size=9),
            st.booleans(),
        ),
        min_size=1,
        max_size=25,
    ),
    budget=st.integers(min_value=5, max_value=120),
)
def test_the_lazy_greedy_picks_what_the_plain_greedy_picks(
    lines: list[tuple[str, list[str], bool]], budget: int
) -> None:
    transcript = "\n".join(
        f"user: {f'[{n} May, 2023] ' if new_date else ''}{speaker}: {' '.join(words)}."
        for n, (speaker, words, new_date) in enumerate(lines)
    )
    candidates, latest = facts_of(transcript)
    candidates = list(dict.fromkeys(candidates))
    request = SummaryRequest(None, transcript, budget, COUNT)
    assert _select(candidates, latest, request) == naive_select(candidates, latest, request)


def test_small_talk_folds_into_a_placeholder_that_the_next_fold_drops() -> None:
    small_talk = "user: Ann: hi there!\nassistant: Bob: hello hello!\nuser: Ann: ok thanks!"
    first = summarize(None, small_talk)
    assert first == "(small talk only)"
    second = summarize(first, "user: Ann: I moved to Lisbon in 2021.")
    assert second == "Ann: moved to Lisbon in 2021"


def test_a_budget_below_the_date_line_drops_the_date_line() -> None:
    assert summarize(None, "user: [8 May, 2023] Ann: hi!", budget=8) == "[8 May, 2023]"
    assert summarize(None, "user: [8 May, 2023] Ann: hi!", budget=7) == "(small talk only)"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Caroline", "Melanie", "user", "", "[8 May, 2023]"]),
            st.lists(
                st.text(
                    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
                    min_size=1,
                ),
                min_size=1,
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["gpt-4o", "gpt-4"]),
)
def test_a_summary_counted_by_lines_is_counted_exactly(
    runs: list[tuple[str, list[str]]], model: str
) -> None:
    """_fit searches on line counts: for a summary's lines they are the whole count."""
    count = counter_for(model).text
    facts = [Fact(speaker, text, "8 May, 2023") for speaker, texts in runs for text in texts]
    text = render_facts(facts, "9 May, 2023")
    if any(line.startswith("/") for line in text.split("\n")):
        return  # a line never starts so (speakers are names, dates are bracketed)
    assert _line_tokens(count, text) == count(text)


def test_a_fold_of_a_long_summary_is_the_same_as_before_memoized() -> None:
    """What is remembered between folds changes nothing: the same fold twice, the
    second from memory, gives the same summary."""
    previous = summarize(None, TRANSCRIPT, budget=60)
    first = summarize(previous, TRANSCRIPT.replace("Portland", "Seattle"), budget=40)
    again = summarize(previous, TRANSCRIPT.replace("Portland", "Seattle"), budget=40)
    assert first == again and COUNT(first) <= 40


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(
            st.sampled_from(["a", "B", "7", " ", "\t", ".", "/", "\r", "\n", ";", "é", "\u2028"]),
            max_size=12,
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["gpt-4o", "gpt-4"]),
)
def test_a_text_whose_lines_add_up_is_counted_exactly_by_its_lines(
    lines: list[str], model: str
) -> None:
    """The fit counts a summary by its lines when they add up: on any text, they then
    give its exact count (what a summary is checked against its budget with)."""
    count = counter_for(model).text
    text = "\n".join(lines)
    if _lines_add_up(text):
        assert _line_tokens(count, text) == count(text)


def test_lines_that_a_piece_can_run_into_do_not_add_up() -> None:
    for text in ("a.\n/b", "a\n\nb", "a\n  \nb", "a\n\rb"):
        assert not _lines_add_up(text)
    assert _lines_add_up("[8 May, 2023]\nAnn: went to Lisbon; saw 2 museums\n[9 May, 2023]")


@settings(max_examples=150, deadline=None)
@given(
    facts=st.lists(
        st.tuples(
            st.sampled_from(["Ann", "Bob", ""]),
            st.sampled_from(["moved to Lisbon", "has 2 cats.", "a/b test", "x"]),
            st.sampled_from(["", "8 May, 2023", "9 May, 2023"]),
        ),
        min_size=0,
        max_size=12,
    ),
    order=st.randoms(use_true_random=False),
    latest=st.sampled_from(["", "8 May, 2023", "10 May, 2023"]),
    model=st.sampled_from(["gpt-4o", "gpt-4"]),
)
def test_the_fit_measures_a_rendering_by_its_date_blocks_as_its_lines_count_it(
    facts: list[tuple[str, str, str]], order: Any, latest: str, model: str
) -> None:
    """Dates in any order (a date coming back, undated facts after dated ones): the
    blocks' counts add up to the rendering's lines' counts, for every prefix."""
    count = counter_for(model).text
    candidates = [
        Fact(speaker, f"{text} {i}", date) for i, (speaker, text, date) in enumerate(facts)
    ]
    chosen = list(range(len(candidates)))
    order.shuffle(chosen)
    measure = _LineCounts(candidates, chosen, count)
    for kept in range(len(chosen) + 1):
        text = render_facts([candidates[i] for i in sorted(chosen[:kept])], latest)
        assert measure(kept, latest) == _line_tokens(count, text)


def reference_parse(summary: str | None) -> tuple[list[Fact], str]:
    """The summary's facts as the format defines them, read the plain way."""
    facts: list[Fact] = []
    date = ""
    for line in (summary or "").splitlines():
        if line == NOTHING_KEPT:
            continue
        if len(line) > 2 and line[0] == "[" and line[-1] == "]" and "]" not in line[1:-1]:
            date = line[1:-1]  # (a line holds no newline)
            continue
        speaker, separator, body = line.partition(": ")
        if not separator:
            speaker, body = "", line
        facts.extend(Fact(speaker, t, date) for t in body.split(FACT_SEPARATOR) if t.strip())
    speakers = frozenset(fact.speaker for fact in facts)
    return [
        Fact(f.speaker, f.text, f.date, KEPT_BONUS * _prior(f.text, speakers)) for f in facts
    ], date


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(["[8 May, 2023]", "[9 May]", NOTHING_KEPT, "", "[]", "[a]b]"]),
            st.builds(
                lambda speaker, texts: f"{speaker}{': ' if speaker else ''}{'; '.join(texts)}",
                st.sampled_from(["Ann", "Bob", "", "user"]),
                st.lists(st.sampled_from(["went home", " ", "I have 2 cats", "Ann, hi", "x: y"])),
            ),
        ),
        max_size=8,
    )
)
def test_a_summary_read_from_remembered_lines_is_read_as_the_format_says(lines: list[str]) -> None:
    summary = "\n".join(lines)
    expected = reference_parse(summary)
    for _ in range(2):  # the second time from memory
        facts, date = parse_summary(summary)
        assert (facts, date) == expected
        assert [f.prior for f in facts] == [f.prior for f in expected[0]]


def test_a_fold_counts_the_extractive_summary_from_its_lines_not_whole() -> None:
    """The fit counts the summary by its lines (exact), and the fold's budget check
    takes that count instead of encoding the summary again."""
    counted: list[str] = []

    def count(text: str) -> int:
        counted.append(text)
        return COUNT(text)

    previous = summarize(None, TRANSCRIPT * 4, budget=120)
    result = fold(ExtractiveSummarizer(), Request(previous, TRANSCRIPT, 100, count))
    assert COUNT(result.text) <= 100 and "\n" in result.text
    assert result.text not in counted
    assert result.text == summarize(previous, TRANSCRIPT, budget=100)


def test_a_fold_checks_any_other_answer_against_its_budget() -> None:
    class Verbose:
        name = "verbose"
        prompt_version = "1"
        input_tokens = 10_000

        def summarize(self, request: SummaryRequest) -> SummaryResult:
            return SummaryResult("One fact. " * 50)

    result = fold(Verbose(), Request(None, TRANSCRIPT, 20, COUNT))
    assert COUNT(result.text) <= 20


def test_a_fold_takes_a_count_it_cannot_remember_by() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, text: str) -> int:
            return COUNT(text)

    class Echo:
        name = "echo"
        prompt_version = "1"
        input_tokens = 10_000

        def summarize(self, request: SummaryRequest) -> SummaryResult:
            return SummaryResult("Ann moved to Lisbon. " * 10)

    result = fold(Echo(), Request(None, TRANSCRIPT, 12, Unhashable()))
    assert result.text == "Ann moved to Lisbon. Ann moved to Lisbon."
