"""The command line: db upgrade on a new file, idempotent, JSON output, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from context_trimmer.cli import main


def test_db_upgrade_creates_the_schema_then_is_a_no_op(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    runner = CliRunner()
    first = runner.invoke(main, ["db", "upgrade", "--db", url, "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["changed"] is True
    second = runner.invoke(main, ["db", "upgrade", "--db", url])
    assert second.exit_code == 0
    assert "already current" in second.output


def test_db_url_from_environment(tmp_path: Path, monkeypatch: object) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    result = CliRunner().invoke(main, ["db", "current", "--json"], env={"CONTEXT_TRIMMER_DB": url})
    assert result.exit_code == 0
    assert json.loads(result.output)["database"] == url


def test_installed_console_script_runs(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("context-trimmer")
    url = f"sqlite:///{tmp_path / 'script.db'}"
    done = subprocess.run(
        [str(script), "db", "upgrade", "--db", url], capture_output=True, text=True, check=True
    )
    assert "upgraded" in done.stdout


def test_count_command(tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps([{"role": "user", "content": "tiktoken is great!"}]))
    result = CliRunner().invoke(main, ["count", str(request), "--json"])
    assert json.loads(result.output) == {"model": "gpt-4o", "prompt_tokens": 3 + 1 + 6 + 3}


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps([{"role": "robot", "content": "hi"}]))
    result = CliRunner().invoke(main, ["count", str(request)])
    assert result.exit_code == 1
    assert "Error: messages[0].role: 'robot' is not a Chat Completions role" in result.output
    assert "Traceback" not in result.output
