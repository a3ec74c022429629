"""``serve --config FILE``: the gateway's pool of upstreams. The file's checks (each
error names the file, the upstream and the field), keys read from the environment only,
the pool in-process over real HTTP, and the issue's "done when" through a real
``serve`` process: two upstreams that each allow 20 requests a minute answer 30
requests in a few seconds, no 429 reaching the client, each serving at least 8."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner
from gateway_server import ServeProcess, ServerThread
from openai_server import FakeOpenAI, Reply, RequestLimiter

from context_trimmer._exceptions import ConfigurationError
from context_trimmer._store.db import Database
from context_trimmer._store.keys import create_key
from context_trimmer.cli import main
from context_trimmer.gateway import GatewayConfig, create_app
from context_trimmer.gateway._config import describe, endpoints
from context_trimmer.gateway._upstreams import load_upstreams

KEYS = {"KEY_A": "secret-key-a", "KEY_B": "secret-key-b"}
TWO = """
[[upstreams]]
name = "a"
base_url = "{a}"
api_key_env = "KEY_A"

[[upstreams]]
name = "b"
base_url = "{b}"
api_key_env = "KEY_B"
{extra}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "upstreams.toml"
    path.write_text(text, "utf-8")
    return path


def two(
    tmp_path: Path,
    a: str = "http://127.0.0.1:1/v1",
    b: str = "http://127.0.0.1:2/v1",
    extra: str = "",
) -> Path:
    return write(tmp_path, TWO.format(a=a, b=b, extra=extra))


BAD = [
    ("[[upstreams]]\nname = 'a'\nbase_url = 'http://h/v1'\n", "#1 ('a'): api_key_env is missing"),
    ("upstreams = 3", "no [[upstreams]]"),
    ("", "no [[upstreams]]"),
    ("listen = 8000\n[[upstreams]]\nname='a'", "unknown setting 'listen'"),
    ("[[upstreams", "not valid TOML"),
]
BAD_SECOND = [
    ('base_url = "ftp://h"', "base_url must be an http(s) URL"),
    ('api_key = "sk-live-123456789"', "api_key has no place here: keys stay in the environment"),
    ('model = "gpt-4o"', "unknown field 'model'"),
    ('models = "gpt-4o"', "models must be a list of model names or a table"),
    ("models = [1]", "models must name models with non-empty strings"),
    ('models = { "gpt-4o" = "" }', "models must name models with non-empty strings"),
    ("azure = true", "api_version goes with azure = true"),
    ('api_version = "2024-10-21"', "api_version goes with azure = true"),
    ('azure = "yes"\napi_version = "v"', "azure must be true or false"),
    ("tpm = 0", "tpm must be an integer >= 1, got 0"),
    ("rpm = 1.5", "rpm must be an integer >= 1, got 1.5"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_file_names_itself_and_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as caught:
        load_upstreams(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


def second_with(line: str) -> str:
    """Two upstreams, the second with ``line`` in place of its own field of that name."""
    own = {"name": '"b"', "base_url": '"http://h2/v1"', "api_key_env": '"KEY_B"'}
    replaced = line.split("=")[0].strip()
    fields = "\n".join(f"{k} = {v}" for k, v in own.items() if k != replaced)
    first = '[[upstreams]]\nname = "a"\nbase_url = "http://h/v1"\napi_key_env = "KEY_A"'
    return f"{first}\n\n[[upstreams]]\n{fields}\n{line}\n"


@pytest.mark.parametrize(("line", "message"), BAD_SECOND)
def test_a_bad_upstream_is_named_with_its_field(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, second_with(line))
    with pytest.raises(ConfigurationError) as caught:
        load_upstreams(path)
    said = str(caught.value)
    assert said.startswith(f"{path}: [[upstreams]] #2 ('b'): ") and message in said
    assert "sk-live-123456789" not in said


def test_more_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_upstreams(tmp_path / "missing.toml")
    twice = TWO.format(a="http://h/v1", b="http://h/v1", extra="").replace('"b"', '"a"')
    with pytest.raises(ConfigurationError, match=r"two \[\[upstreams\]\] are named 'a'"):
        load_upstreams(write(tmp_path, twice))
    pasted = TWO.format(a="http://h/v1", b="http://h/v1", extra="").replace(
        '"KEY_B"', '"sk-proj-abcdefghijklmnop"'
    )
    with pytest.raises(ConfigurationError) as caught:
        load_upstreams(write(tmp_path, pasted))
    assert "not its value; got a 24-character value" in str(caught.value)
    assert "abcdefghijklmnop" not in str(caught.value)


def test_keys_come_from_the_environment_and_the_settings_travel_without_them(
    tmp_path: Path,
) -> None:
    path = two(tmp_path, extra='models = { "gpt-4o" = "dep-4o" }\ntpm = 9000')
    config = GatewayConfig(config=str(path), summarizer="extractive")
    assert config.upstreams == load_upstreams(path) and config.upstreams[1].tpm == 9000
    with pytest.raises(ConfigurationError, match="set KEY_B to the API key of upstream 'b'"):
        endpoints(config, {"KEY_A": "x"})
    ends = endpoints(config, KEYS)
    assert [u.key for u in ends.upstreams] == ["secret-key-a", "secret-key-b"]
    text = config.to_json()
    assert "secret-key" not in text and str(path) in text
    assert GatewayConfig.from_json(text) == config  # a worker reads the file again
    assert GatewayConfig.from_json(text).upstreams == config.upstreams
    with pytest.raises(ConfigurationError, match="give --upstream or --config FILE, not both"):
        GatewayConfig(upstream="http://h/v1", config=str(path))
    assert GatewayConfig().upstreams == ()


def test_serve_refuses_a_bad_file_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[[upstreams]]\nname = "a"\nbase_url = "h"\napi_key_env = "K"\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(path)])
    assert result.exit_code == 1
    assert (
        f"Error: {path}: [[upstreams]] #1 ('a'): base_url must be an http(s) URL" in result.output
    )
    assert "Traceback" not in result.output


def test_summaries_skip_azure_upstreams(tmp_path: Path) -> None:
    azure = 'azure = true\napi_version = "2024-10-21"'
    config = GatewayConfig(config=str(two(tmp_path, extra=azure)))
    ends = endpoints(config, KEYS)
    assert (ends.summary_url, ends.summary_key) == ("http://127.0.0.1:1/v1", "secret-key-a")
    both = TWO.format(a="http://h/v1", b="http://h2/v1", extra=azure).replace(
        'api_key_env = "KEY_A"', f'api_key_env = "KEY_A"\n{azure}'
    )
    all_azure = GatewayConfig(config=str(write(tmp_path, both)))
    with pytest.raises(ConfigurationError, match="every upstream is Azure OpenAI"):
        endpoints(all_azure, KEYS)
    endpoints(GatewayConfig(config=all_azure.config, summarizer="extractive"), KEYS)


@pytest.fixture
def admin_and_key(sqlite_url: str) -> Iterator[tuple[str, str]]:
    store = Database(sqlite_url)
    key, _ = create_key(store, "acme")
    admin, _ = create_key(store, "ops", admin=True)
    store.close()
    yield key, admin


def test_the_gateway_pool_maps_models_and_reports_by_upstream(
    tmp_path: Path, sqlite_url: str, admin_and_key: tuple[str, str]
) -> None:
    key, admin = admin_and_key
    with (
        FakeOpenAI(lambda b: Reply("A", model=b["model"])) as a,
        FakeOpenAI(lambda b: Reply("B", model=b["model"])) as b,
    ):
        models = 'models = { "gpt-4o" = "b-4o", "gpt-4o-mini" = "gpt-4o-mini" }'
        path = two(tmp_path, a.base_url, b.base_url, models)
        a_models = 'api_key_env = "KEY_A"\nmodels = ["gpt-4o", "gpt-4.1"]'
        write(tmp_path, path.read_text().replace('api_key_env = "KEY_A"', a_models))
        config = GatewayConfig(
            db_url=sqlite_url, config=str(path), summarizer="extractive", key_cache_seconds=0
        )
        with ServerThread(create_app(config, environ=KEYS)) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
            answers = [
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": f"hi {n}"}]
                )
                .choices[0]
                .message.content
                for n, model in enumerate(["gpt-4o", "gpt-4o", "gpt-4.1", "gpt-4.1"])
            ]
            with pytest.raises(openai.BadRequestError, match="no upstream serves model 'o3'"):
                client.chat.completions.create(
                    model="o3", messages=[{"role": "user", "content": "x"}]
                )
            savings = httpx.get(
                f"{server.base_url}/savings?group_by=upstream",
                headers={"authorization": f"Bearer {admin}"},
            ).json()
            client.close()
    assert sorted(answers) == ["A", "A", "A", "B"]  # gpt-4.1 only on A; gpt-4o on both
    assert sorted(r["model"] for r in b.requests) == ["b-4o"]
    assert {h["authorization"] for h in a.headers} == {"Bearer secret-key-a"}
    assert {h["authorization"] for h in b.headers} == {"Bearer secret-key-b"}
    groups = {row["group"]: row["requests"] for row in savings["rows"]}
    host = lambda s: s.base_url.split("//")[1].split("/")[0]  # noqa: E731
    assert groups == {f"a@{host(a)}": 3, f"b@{host(b)}": 1}


def test_serve_with_two_upstreams_of_20_requests_a_minute_answers_30_requests(
    tmp_path: Path, sqlite_url: str, admin_and_key: tuple[str, str]
) -> None:
    """The issue's "done when", through the real command in its own process."""
    key, admin = admin_and_key
    limited = [FakeOpenAI(lambda b: Reply("ok"), limiter=RequestLimiter(20)) for _ in range(2)]
    with limited[0] as a, limited[1] as b:
        path = two(tmp_path, a.base_url, b.base_url)
        environ = {**os.environ, **KEYS}
        options = ["--db", sqlite_url, "--config", str(path), "--summarizer", "extractive"]
        with ServeProcess(*options, env=environ) as serve:

            def ask(n: int) -> int:
                with httpx.Client(timeout=60) as http:
                    answer = http.post(
                        f"{serve.base_url}/chat/completions",
                        headers={"authorization": f"Bearer {key}"},
                        json={
                            "model": "gpt-4o",
                            "messages": [{"role": "user", "content": f"q{n}"}],
                        },
                    )
                return answer.status_code

            with ThreadPoolExecutor(6) as pool:
                statuses = list(pool.map(ask, range(30)))
            savings = httpx.get(
                f"{serve.base_url}/savings?group_by=upstream",
                headers={"authorization": f"Bearer {admin}"},
            ).json()
            printed = serve.output
    assert statuses == [200] * 30
    served = [a.statuses[200], b.statuses[200]]
    assert sum(served) == 30 and min(served) >= 8, served
    groups = {row["group"]: row["requests"] for row in savings["rows"]}
    assert sorted(groups.values()) == sorted(served)
    assert savings["totals"]["failed_requests"] == 0
    assert "secret-key" not in printed
    assert f"a: {a.base_url} with $KEY_A" in printed and f"b: {b.base_url} with $KEY_B" in printed


def test_the_documented_configuration_file_loads_as_documented(tmp_path: Path) -> None:
    readme = Path(__file__).resolve().parents[1] / "docs" / "gateway.md"
    (block,) = re.findall(r"```toml\n(.*?)```", readme.read_text(), re.DOTALL)
    path = write(tmp_path, block)
    upstreams = load_upstreams(path)
    assert [u.name for u in upstreams] == ["openai-a", "openai-b", "azure-east"]
    assert upstreams[2].models == {"gpt-4o": "gpt4o-prod"} and upstreams[2].azure
    assert upstreams[0].limits is not None and upstreams[0].limits.tokens_per_minute == 30000
    environ = {"OPENAI_KEY_A": "a", "OPENAI_KEY_B": "b", "AZURE_EAST_KEY": "c"}
    ends = endpoints(GatewayConfig(config=str(path)), environ)
    assert len(ends.upstreams) == 3 and ends.summary_url == "https://api.openai.com/v1"


def test_healthz_names_an_upstream_cooling_down_after_refused_connections(
    tmp_path: Path, sqlite_url: str, admin_and_key: tuple[str, str]
) -> None:
    key, _admin = admin_and_key
    with socket.socket() as probe:  # a port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    with FakeOpenAI(lambda _b: Reply("A")) as a:
        config = GatewayConfig(
            db_url=sqlite_url,
            config=str(two(tmp_path, a.base_url, dead)),
            summarizer="extractive",
            key_cache_seconds=0,
        )
        with ServerThread(create_app(config, environ=KEYS)) as server:
            health = f"{server.base_url.removesuffix('/v1')}/healthz"
            before = httpx.get(health).json()
            client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
            answers = [
                client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": f"hi {n}"}]
                )
                .choices[0]
                .message.content
                for n in range(8)
            ]
            client.close()
            after = httpx.get(health).json()
    assert answers == ["A"] * 8  # every request answered by the live upstream
    dead_label = f"b@{dead.split('//')[1].split('/')[0]}"
    assert before["upstreams"] == [f"a@{a.base_url.split('//')[1].split('/')[0]}", dead_label]
    assert before["upstreams_cooling"] == []
    assert after["upstreams_cooling"] == [dead_label]


def test_the_start_up_lines_name_each_upstream_and_where_folds_run(tmp_path: Path) -> None:
    path = two(tmp_path, extra='models = { "gpt-4o" = "dep-4o" }')
    queued = GatewayConfig(
        config=str(path),
        summarizer="extractive",
        db_url="postgresql+psycopg://u@db/app",
        folds="queue",
    )
    lines = describe(queued, endpoints(queued, KEYS))
    assert re.search(r"upstream 1 +a: http://127\.0\.0\.1:1/v1 with \$KEY_A", lines)
    assert re.search(r"upstream 2 +b: .* for gpt-4o as dep-4o", lines)
    assert re.search(r"folds +jobs for context-trimmer worker", lines)
    assert "secret-key" not in lines
    plain = GatewayConfig(config=str(path), summarizer="extractive")
    assert re.search(r"folds +thread", describe(plain, endpoints(plain, KEYS)))
