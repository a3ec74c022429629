"""Replay: logs in, savings out; with an LLM summarizer over real HTTP, prompts stay bounded."""

from __future__ import annotations

import json
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from openai_server import FakeOpenAI, Reply
from sqlalchemy import select

from context_trimmer import ConfigurationError, OpenAISummarizer, Trimmer
from context_trimmer._jobs.replay import Conversation, load_conversations, replay
from context_trimmer._store.summaries import SUMMARIES
from context_trimmer.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "support-chat.jsonl"


def long_chat(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are helpful."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Turn {turn}: " + "details " * 30})
        messages.append({"role": "assistant", "content": f"Reply {turn}: " + "noted " * 30})
    return messages


def test_llm_replay_keeps_prompts_bounded_and_uses_the_servers_summaries(
    sqlite_url: str,
) -> None:
    numbers = count(1)
    with FakeOpenAI(default=lambda _b: Reply(f"- summary number {next(numbers)}")) as server:
        summarizer = OpenAISummarizer(base_url=server.base_url, api_key="k", max_retries=0)
        with Trimmer(
            sqlite_url, keep_last=10, fold_every=6, summarizer=summarizer, background=False
        ) as trimmer:
            conversation = Conversation("long", long_chat(120))
            result = replay(trimmer, [conversation])
            final = result.last["long"]
            with trimmer._db.engine.connect() as connection:
                summaries = connection.execute(select(SUMMARIES)).all()
    assert result.summaries == len(server.requests) == len(summaries) > 10
    assert {row.summarizer for row in summaries} == {"openai:gpt-4o-mini"}
    assert f"summary number {len(summaries)}" in final.messages[1]["content"]
    assert final.baseline_tokens > 10 * final.prompt_tokens
    assert max(result.final_prompt_tokens) < 2_000  # bounded while history grew to ~16k


def test_jsonl_and_locomo_formats(tmp_path: Path) -> None:
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text(
        json.dumps([{"role": "user", "content": "hi"}])
        + "\n\n"
        + json.dumps(
            {
                "messages": [{"role": "user", "content": "yo"}],
                "conversation_id": "c2",
                "user": "ann",
            }
        )
        + "\n"
    )
    first, second = load_conversations(jsonl)
    assert (first.id, second.id, second.user) == ("log-1", "c2", "ann")
    locomo = tmp_path / "locomo.json"
    locomo.write_text(
        json.dumps(
            [
                {
                    "sample_id": "s1",
                    "conversation": {
                        "speaker_a": "Ann",
                        "speaker_b": "Bo",
                        "session_1_date_time": "1 May 2023",
                        "session_1": [
                            {"speaker": "Ann", "text": "Hi Bo"},
                            {"speaker": "Bo", "text": "Hi"},
                        ],
                    },
                }
            ]
        )
    )
    (conversation,) = load_conversations(locomo)
    assert conversation.messages[1] == {"role": "user", "content": "[1 May 2023] Ann: Hi Bo"}
    assert conversation.messages[2] == {"role": "assistant", "content": "Bo: Hi"}


def test_bad_logs_name_the_line_and_message(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('[{"role": "user", "content": "ok"}]\n{not json\n')
    with pytest.raises(ConfigurationError, match=r"broken.jsonl:2: not JSON"):
        load_conversations(broken)
    invalid = tmp_path / "invalid.jsonl"
    invalid.write_text(json.dumps([{"role": "user", "content": "a"}, {"role": "x"}]) + "\n")
    with pytest.raises(ConfigurationError, match=r"invalid-1: messages\[1\]\.role"):
        load_conversations(invalid)


def test_cli_replay_of_the_shipped_example(sqlite_url: str) -> None:
    result = CliRunner().invoke(
        main,
        [
            "replay",
            str(EXAMPLE),
            "--db",
            sqlite_url,
            "--keep-last",
            "6",
            "--fold-every",
            "4",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    output = json.loads(result.stdout)
    report = output["replay"]
    assert output["report"]["totals"]["requests"] == report["requests"] == 22
    assert output["report"]["rows"][0]["group"] == "crumb-onboarding"
    assert 0 < report["prompt_tokens"] < report["baseline_tokens"]
    assert report["summaries"] > 0 and report["summary_failures"] == 0


def test_cli_replay_with_a_summary_share(sqlite_url: str) -> None:
    base = ["replay", str(EXAMPLE), "--db", sqlite_url, "--keep-last", "6", "--fold-every", "4"]
    result = CliRunner().invoke(main, [*base, "--summary-share", "0.1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["replay"]["summaries"] > 0
    bad = CliRunner().invoke(main, [*base, "--summary-share", "2"])
    assert bad.exit_code != 0
    assert "summary_share must be a number in (0, 1]" in bad.output


def test_cli_replay_recall_share_bounds_recall_and_off_lifts_the_bound(tmp_path: Path) -> None:
    def recalled(share: str) -> int:
        url = f"sqlite:///{tmp_path / share}.db"
        arguments = ["replay", str(EXAMPLE), "--db", url, "--keep-last", "6", "--fold-every", "4"]
        result = CliRunner().invoke(main, [*arguments, "--recall-share", share, "--json"])
        assert result.exit_code == 0, result.output
        return int(json.loads(result.stdout)["report"]["totals"]["recall_tokens"])

    assert 0 < recalled("0.02") < recalled("off")
    bad = CliRunner().invoke(main, ["replay", str(EXAMPLE), "--recall-share", "most"])
    assert bad.exit_code == 2
    assert "'most': use a number in (0, 1], such as 0.05, or off" in bad.output
