"""A user's data out and gone: export round-trips, forget leaves no trace of the text
(SQLite file bytes, PostgreSQL rows) while other users and the report's totals are
unchanged, and prune erases by age."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from openai_server import FakeOpenAI, Reply
from sqlalchemy import MetaData, select, update
from summary_rows import decoded

from context_trimmer import PromptRewriter, Trimmer
from context_trimmer._jobs.replay import load_conversations
from context_trimmer._store.ledger import REQUESTS
from context_trimmer._store.schema import Base, utcnow
from context_trimmer._store.summaries import SUMMARIES
from context_trimmer.cli import main

SYSTEM = "You are the support agent of Crumb, a bakery delivery service."


def chat(who: str, turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"{who} secret {turn}: my card ends 4{turn}1"})
        messages.append({"role": "assistant", "content": f"Noted for {who}, order {turn}."})
    messages.append({"role": "user", "content": f"{who} secret last: when does it ship?"})
    return messages


def play(trimmer: Trimmer, messages: list[dict[str, Any]], **who: Any) -> None:
    """Prepare every user turn of ``messages`` as the app would, folding when due."""
    for end in range(2, len(messages) + 1, 2):
        prepared = trimmer.prepare(messages[:end], **who)
        if prepared.fold_pending:
            trimmer.compact(messages[:end], **who)


def every_row(trimmer: Trimmer) -> str:
    """Every value of every table, as text (a summary kept as a delta decoded too: its
    text must go as well)."""
    metadata = MetaData()
    metadata.reflect(trimmer._db.engine)
    dump = []
    with trimmer._db.engine.connect() as connection:
        for reflected in metadata.sorted_tables:
            table = Base.metadata.tables.get(reflected.name, reflected)  # the model's types
            found = list(connection.execute(select(table)))
            dump += [repr(tuple(row)) for row in found]
            if table is SUMMARIES:
                dump += [row.text for row in decoded(connection, found)]
    return "\n".join(dump)


def test_export_round_trips(trimmer: Trimmer, tmp_path: Path) -> None:
    ann, bob = chat("ann", 6), chat("bob", 3)
    play(trimmer, ann, user="ann", conversation_id="ann-1")
    play(trimmer, bob, user="bob", conversation_id="bob-1")
    (exported,) = trimmer.export("ann")
    assert exported["messages"] == ann and exported["conversation_id"] == "ann-1"
    assert len(exported["timestamps"]) == len(ann) and exported["requests"] == 7
    assert exported["summary"] is not None and "ann" in exported["summary"]["text"]
    out = tmp_path / "ann.jsonl"
    result = CliRunner().invoke(
        main, ["export", "--user", "ann", "--db", trimmer._db.url, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "bob" not in out.read_text() and "ann secret 5" in out.read_text()
    (again,) = load_conversations(out)  # the export replays as it is
    assert (again.id, again.user, again.messages) == ("ann-1", "ann", ann)


def test_forget_leaves_no_trace_and_keeps_bob_and_the_totals(trimmer: Trimmer) -> None:
    ann, bob = chat("ann", 8), chat("bob", 8)
    play(trimmer, ann, user="ann", conversation_id="ann-1")
    play(trimmer, bob, user="bob", conversation_id="bob-1")
    ann_heads = [row.head_hash for row in _requests(trimmer) if row.user == "ann"]
    bob_before = trimmer.prepare(bob, user="bob", conversation_id="bob-1")
    before = trimmer.report().totals.as_dict()
    bob_row = {row.group: row for row in trimmer.report(group_by="user").rows}["bob"]
    erasure = trimmer.forget("ann")
    assert erasure.conversations == 1 and erasure.messages == len(ann)
    assert erasure.summaries >= 1 and erasure.requests_anonymised == 9
    assert trimmer.report().totals.as_dict() == before
    assert list(trimmer.export("ann")) == []
    by_user = {row.group: row for row in trimmer.report(group_by="user").rows}
    assert "ann" not in by_user and by_user["bob"] == bob_row
    bob_after = trimmer.prepare(bob, user="bob", conversation_id="bob-1")
    assert (bob_after.messages, bob_after.prompt_tokens) == (
        bob_before.messages,
        bob_before.prompt_tokens,
    )
    (bob_export,) = trimmer.export("bob")
    assert bob_export["messages"] == bob
    dump = every_row(trimmer)
    assert "ann secret" not in dump and "'ann'" not in dump and "ann-1" not in dump
    assert not any(head in dump for head in ann_heads)
    assert "bob secret 7" in dump
    if trimmer._db.is_sqlite:
        database = Path(trimmer._db.engine.url.database or "")
        files = (database, database.with_name(database.name + "-wal"))
        assert b"bob secret 7" in database.read_bytes()
        # secure_delete zeroed the freed space and the log was emptied: no trace even
        # before a VACUUM; and none after it.
        assert not any(b"ann secret" in f.read_bytes() for f in files if f.exists())
        raw = trimmer._db.engine.raw_connection()
        raw.cursor().execute("VACUUM")
        raw.close()
        assert not any(b"ann secret" in f.read_bytes() for f in files if f.exists())


def _requests(trimmer: Trimmer) -> list[Any]:
    with trimmer._db.engine.connect() as connection:
        return list(connection.execute(select(REQUESTS)))


def test_forget_keeps_report_totals_exactly(trimmer: Trimmer) -> None:
    play(trimmer, chat("ann", 8), user="ann", conversation_id="ann-1")
    play(trimmer, chat("bob", 4), user="bob", conversation_id="bob-1")
    before = trimmer.report().as_dict()["totals"]
    trimmer.forget("ann")
    assert trimmer.report().as_dict()["totals"] == before
    bob, erased = trimmer.report(group_by="user").rows  # ann's requests and summaries
    assert bob.group == "bob" and erased.group.startswith("erased-") and erased.summaries


def test_a_prefix_shared_without_users_stays_while_used(trimmer: Trimmer) -> None:
    x, y = chat("xavier", 3), chat("yann", 3)
    play(trimmer, x, conversation_id="x")
    play(trimmer, y, conversation_id="y")
    y_before = trimmer.prepare(y, conversation_id="y")
    erasure = trimmer.forget(None, "x")
    assert erasure.messages_kept_shared == 1  # the system prompt, which y still sends
    dump = every_row(trimmer)
    assert "xavier" not in dump and SYSTEM in dump
    y_after = trimmer.prepare(y, conversation_id="y")
    assert y_after.messages == y_before.messages
    assert y_after.prompt_tokens == y_before.prompt_tokens


def test_forget_one_conversation_of_a_user(trimmer: Trimmer) -> None:
    play(trimmer, chat("ann", 2), user="ann", conversation_id="a1")
    other = chat("ann-again", 2)
    play(trimmer, other, user="ann", conversation_id="a2")
    trimmer.forget("ann", "a1")
    (left,) = trimmer.export("ann")
    assert left["conversation_id"] == "a2" and left["messages"] == other


def test_cli_forget_needs_yes_and_says_what_it_removed(trimmer: Trimmer) -> None:
    play(trimmer, chat("ann", 2), user="ann", conversation_id="a1")
    url = trimmer._db.url
    refused = CliRunner().invoke(main, ["forget", "--user", "ann", "--db", url])
    assert refused.exit_code != 0 and "--yes" in refused.output
    assert "ann secret" in every_row(trimmer)
    done = CliRunner().invoke(main, ["forget", "--user", "ann", "--yes", "--db", url])
    assert done.exit_code == 0, done.output
    assert re.search(r"messages removed +6\n", done.output), done.output
    assert "ann secret" not in every_row(trimmer)


def test_prune_by_age(trimmer: Trimmer) -> None:
    play(trimmer, chat("old", 2), user="ann", conversation_id="old")
    play(trimmer, chat("new", 2), user="ann", conversation_id="new")
    with trimmer._db.engine.begin() as connection:
        connection.execute(
            update(REQUESTS)
            .where(REQUESTS.c.conversation_id == "old")
            .values(created_at=utcnow() - timedelta(days=40))
        )
    before = trimmer.report().as_dict()["totals"]
    result = CliRunner().invoke(main, ["prune", "--older-than", "30d", "--db", trimmer._db.url])
    assert result.exit_code == 0, result.output
    assert "conversations erased          1" in result.output
    (left,) = trimmer.export("ann")
    assert left["conversation_id"] == "new"
    assert "old secret" not in every_row(trimmer)
    assert trimmer.report().as_dict()["totals"] == before
    assert trimmer.prune(timedelta(days=30)).conversations == 0  # nothing left to prune


def test_prune_rejects_a_bad_age(sqlite_url: str) -> None:
    result = CliRunner().invoke(main, ["prune", "--older-than", "soon", "--db", sqlite_url])
    assert result.exit_code != 0 and "30d" in result.output


def test_export_names_no_other_user(trimmer: Trimmer) -> None:
    play(trimmer, chat("ann", 2), user="ann", conversation_id="a1")
    play(trimmer, chat("bob", 2), user="bob", conversation_id="b1")
    result = CliRunner().invoke(main, ["export", "--user", "ann", "--db", trimmer._db.url])
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["user"] for line in lines] == ["ann"]
    assert "bob" not in result.stdout


def test_forget_empties_prompt_rewrites_nobody_else_sends(sqlite_url: str) -> None:
    own = "You tutor Ann privately (ann secret prompt); answer in two sentences."
    with FakeOpenAI(default=lambda body: Reply(body["messages"][1]["content"])) as server:
        rewriter = PromptRewriter(base_url=server.base_url, api_key="k", max_retries=0)
        with Trimmer(
            sqlite_url, summarizer="extractive", system_prompt="llm", prompt_rewriter=rewriter
        ) as trimmer:
            for messages, who in (
                ([{"role": "system", "content": own}], "ann"),
                ([{"role": "system", "content": SYSTEM}], "ann"),
                ([{"role": "system", "content": SYSTEM}], "bob"),
            ):
                trimmer.prepare([*messages, {"role": "user", "content": "hi"}], user=who)
                trimmer.wait_for_background(timeout=10)
            assert "ann secret prompt" in every_row(trimmer)
            before = trimmer.report().as_dict()["totals"]
            assert before["compressions"] == 2
            erasure = trimmer.forget("ann")
            assert erasure.compressions == 1  # bob still sends the shared prompt
            dump = every_row(trimmer)
            assert "ann secret prompt" not in dump and SYSTEM in dump
            assert trimmer.report().as_dict()["totals"] == before


def test_an_erasure_by_another_process_is_stored_again_in_full(
    trimmer: Trimmer, db_url: str
) -> None:
    """This process remembers the list it saw (where the store looks first); another
    process erases the conversation meanwhile: the next turn stores the whole history
    again, not just the new message (its path would start from nothing)."""
    ann = chat("ann", 4)
    trimmer.prepare(ann, user="ann", conversation_id="ann-1")
    with Trimmer(db_url) as other:  # another process: its own memory
        assert other.forget("ann").messages == len(ann)
    grown = [*ann, {"role": "user", "content": "ann asks again"}]
    prepared = trimmer.prepare(grown, user="ann", conversation_id="ann-1")
    assert prepared.prompt_tokens > 0
    (exported,) = trimmer.export("ann")
    assert exported["messages"] == grown


def test_forget_tenant_erases_it_and_its_end_users_only(trimmer: Trimmer) -> None:
    """forget --tenant acme: acme and acme:alice go; the tenant acme:bob (stored
    acme\\:bob), ACME:carol (another case) and acmex:dan stay."""
    from context_trimmer._store.tenants import tenant_user

    play(trimmer, chat("acme-own", 2), user=tenant_user("acme", None), conversation_id="t0")
    play(trimmer, chat("alice", 2), user=tenant_user("acme", "alice"), conversation_id="t1")
    kept = {
        tenant_user("acme:bob", None): chat("bobtenant", 2),
        tenant_user("ACME", "carol"): chat("carol", 2),
        tenant_user("acmex", "dan"): chat("dan", 2),
    }
    assert tenant_user("acme:bob", None) == "acme\\:bob"
    for user, messages in kept.items():
        play(trimmer, messages, user=user, conversation_id="k")
    url = trimmer._db.url
    both = CliRunner().invoke(main, ["forget", "--user", "a", "--tenant", "acme", "--db", url])
    assert both.exit_code != 0 and "--tenant" in both.output
    done = CliRunner().invoke(main, ["forget", "--tenant", "acme", "--yes", "--db", url])
    assert done.exit_code == 0, done.output
    rows = every_row(trimmer)
    assert "acme-own secret" not in rows and "alice secret" not in rows
    for user, messages in kept.items():
        (left,) = trimmer.export(user)
        assert left["messages"] == messages, user
    assert trimmer.export("acme") == [] and trimmer.export("acme:alice") == []


def test_forget_help_says_which_option_does_what() -> None:
    text = " ".join(CliRunner().invoke(main, ["forget", "--help"]).output.split())
    assert "--tenant" in text and "all its end users" in text
    assert "NOT included" in text
