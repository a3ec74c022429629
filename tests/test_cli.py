"""The command line: db upgrade on a new file, idempotent, JSON output, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
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
    assert json.loads(result.output)["revision"] is None
    assert not (tmp_path / "env.db").exists()  # shown, not created


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


@pytest.mark.parametrize(
    "command",
    [
        ["report"],
        ["report", "--html", "page.html"],
        ["status"],
        ["keys", "list"],
        ["keys", "revoke", "ctk-abc"],
        ["export", "--user", "ann"],
        ["forget", "--user", "ann", "--yes"],
        ["prune", "--older-than", "30d"],
    ],
)
def test_commands_that_read_refuse_a_missing_database(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped path is an error naming the path, not an empty report on a database
    made on the spot: nothing is created, not even the folder."""
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nonexistent" / "dir" / "x.db"
    result = CliRunner().invoke(main, [*command, "--db", f"sqlite:///{missing}"])
    assert result.exit_code == 1, result.output
    assert f"no database at {missing} (from --db)" in result.output
    assert not (tmp_path / "nonexistent").exists()
    monkeypatch.setenv("CONTEXT_TRIMMER_DB", f"sqlite:///{missing}")
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1 and "(from $CONTEXT_TRIMMER_DB)" in result.output
    assert not (tmp_path / "nonexistent").exists() and not (tmp_path / "page.html").exists()


def test_serve_names_the_database_it_resolved(tmp_path: Path) -> None:
    from context_trimmer.gateway._config import GatewayConfig, describe, endpoints

    environ = {"OPENAI_API_KEY": "sk-upstream"}
    default = describe(GatewayConfig(), endpoints(GatewayConfig(), environ))
    line = next(row for row in default.splitlines() if "database" in row)
    assert str(tmp_path / "xdg" / "context-trimmer" / "history.db") in line
    assert "(from the default)" in line
    given = GatewayConfig(db_url="postgresql+psycopg://ann:secret@db.example/app")
    line = next(
        row for row in describe(given, endpoints(given, environ)).splitlines() if "database" in row
    )
    assert "ann:***@db.example/app (from --db)" in line and "secret" not in line


BLOCK_SERVER_PACKAGES = """
import sys
from importlib.abc import MetaPathFinder

class NotInstalled(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("starlette", "uvicorn", "fastapi", "procrastinate"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NotInstalled())
from context_trimmer.cli import main
sys.argv = ["context-trimmer", *sys.argv[1:]]
main()
"""


def test_the_main_job_runs_without_the_optional_extras(tmp_path: Path) -> None:
    """``pip install .`` has no gateway or queue extra: the CLI, and the README's main job,
    must run without starlette, uvicorn or procrastinate (the gateway's configuration is
    read by the CLI, its server loads only for ``serve``)."""
    example = Path(__file__).resolve().parents[1] / "examples" / "support-chat.jsonl"
    replay = ["replay", str(example), "--keep-last", "6", "--fold-every", "4"]
    for args in (["--help"], ["serve", "--help"], replay):
        done = subprocess.run(
            [sys.executable, "-c", BLOCK_SERVER_PACKAGES, *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert "saved" in done.stdout and "48.7%" in done.stdout
