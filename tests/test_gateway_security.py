"""The gateway as a trust boundary, attacked as a hostile tenant would (SQLite and
PostgreSQL): path tricks that try to send the upstream key elsewhere or escape ``/v1``,
another tenant's objects in every stateful family, tenants that try to share a stored
user, and headers uvicorn cannot parse. A capture server proves that no connection
leaves for a host the operator did not configure."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from gateway_server import ServeProcess, ServerThread
from openai_server import FakeOpenAI
from sqlalchemy import create_engine, select
from test_gateway import ENVIRON, KEY_ENV, UPSTREAM_KEY

from context_trimmer._client.upstream_url import normal_path, same_upstream, upstream_url
from context_trimmer._store.db import Database
from context_trimmer._store.keys import create_key
from context_trimmer._store.schema import Request as LedgerRow
from context_trimmer._store.tenants import tenant_user
from context_trimmer.gateway import GatewayConfig, create_app
from context_trimmer.gateway._objects import classify, references

TENANTS = ("alice", "bob", "acme:bob", "acme")


class Capture:
    """A TCP listener on 127.0.0.1 that records every connection made to it: the host a
    leaked request would reach."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            connection.settimeout(2)
            try:
                self.received.append(connection.recv(65536) or b"(connected)")
            except OSError:
                self.received.append(b"(connected)")
            connection.close()

    def __enter__(self) -> Capture:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.sock.close()


def raw_request(
    port: int, method: str, target: str, key: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """``method target`` sent exactly as given (no client-side normalisation)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = {"authorization": f"Bearer {key}", **headers}
    if body is not None:
        sent.setdefault("content-type", "application/json")
    connection.request(method, target, body=body, headers=sent)
    answer = connection.getresponse()
    data = answer.read()
    connection.close()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, data


def socket_request(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Raw bytes on a socket: requests no HTTP client would send."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def assert_json_refusal(status: int, headers: dict[str, str], body: bytes, where: str) -> None:
    assert 400 <= status < 500, f"{where}: {status} {body[:300]!r}"
    assert headers.get("content-type", "").startswith("application/json"), where
    assert "error" in json.loads(body), where
    assert UPSTREAM_KEY.encode() not in body, where


def path_tricks(capture: int) -> list[str]:
    """Paths that must never reach another host or the upstream outside its ``/v1``."""
    host = f"127.0.0.1:{capture}"
    return [
        f"/v1/http://{host}/steal",
        f"/v1/https://{host}/steal",
        f"/v1/HTTP://{host}/steal",
        f"/v1/hTtPs://{host}/steal",
        f"/v1/http:/{host}/steal",
        f"/v1/http:%2f%2f{host}/steal",
        f"/v1/http%3a%2f%2f{host}/steal",
        f"/v1/%68ttp://{host}/steal",
        f"/v1/%2568ttp://{host}/steal",
        f"/v1/models/http://{host}/steal",
        f"/v1//{host}/steal",
        f"/v1/\\\\{host}/steal",
        "/v1/../_requests",
        "/v1/./../_requests",
        "/v1/..%2F_requests",
        "/v1/..%2f_requests",
        "/v1/%2e%2e/_requests",
        "/v1/%2E%2E/_requests",
        "/v1/.%2e/_requests",
        "/v1/%2e./_requests",
        "/v1/%252e%252e/_requests",
        "/v1/%25252e%25252e%25252f_requests",
        "/v1/models/../../_requests",
        "/v1/models/..%2f..%2f_requests",
        "/v1/models/%2e%2e%2f%2e%2e%2f_requests",
        "/v1/..\\_requests",
        "/v1/models\\..\\..\\_requests",
        "/v1/files/..%5c..%5c_requests",
        "/v1/models/%00",
        "/v1/models%0d%0aHost:%20evil",
        "/v1/%ff%fe/models",
    ]


class Tenants:
    """A running gateway (in a thread), its upstream, a capture server, and a key per
    tenant plus an admin key."""

    def __init__(self, db_url: str, capture: Capture, upstream: FakeOpenAI, **settings: Any):
        self.capture, self.upstream = capture, upstream
        self.store = Database(db_url)
        self.keys = {name: create_key(self.store, name)[0] for name in TENANTS}
        self.admin = create_key(self.store, "ops", admin=True)[0]
        config = GatewayConfig(
            db_url=db_url,
            upstream=upstream.base_url,
            upstream_key_env=KEY_ENV,
            key_cache_seconds=0,
            summarizer="extractive",
            **settings,
        )
        self.server = ServerThread(create_app(config, environ=ENVIRON))
        self.clients: list[openai.OpenAI] = []

    def client(self, tenant: str) -> openai.OpenAI:
        key = self.admin if tenant == "admin" else self.keys[tenant]
        made = openai.OpenAI(base_url=self.server.base_url, api_key=key, max_retries=0)
        self.clients.append(made)
        return made

    def request(self, tenant: str, method: str, target: str, **kwargs: Any) -> httpx.Response:
        key = self.admin if tenant == "admin" else self.keys[tenant]
        headers = {"authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
        return httpx.request(
            method, self.server.base_url.removesuffix("/v1") + target, headers=headers, **kwargs
        )

    def close(self) -> None:
        for made in self.clients:
            made.close()
        self.store.close()


@pytest.fixture
def tenants(db_url: str) -> Iterator[Tenants]:
    with Capture() as capture, FakeOpenAI() as upstream:
        running = Tenants(db_url, capture, upstream)
        with running.server:
            yield running
        running.close()


def assert_nothing_escaped(tenants: Tenants) -> None:
    assert tenants.capture.received == []
    for method, path in tenants.upstream.seen:
        assert path.startswith("/v1/"), (method, path)
        assert "_requests" not in path and "steal" not in path, (method, path)


# -- one way to build an upstream URL -----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("files/file-1/content", "files/file-1/content"),
        ("/models//gpt-4o/", "models/gpt-4o"),
        ("files/../models", "models"),
        ("files%2f..%2fmodels", "models"),
        ("a\\b", "a/b"),
        ("../x", None),
        ("%2e%2e/x", None),
        ("%252e%252e/x", None),
        ("%25252525252e", None),
        ("http://evil/x", None),
        ("HTTPS:%2f%2fevil", None),
        ("//evil/x", None),
        ("\\\\evil/x", None),
        ("a%00b", None),
        ("a%3fb", None),
        ("%ff", None),
    ],
)
def test_paths_are_normalised_or_refused(raw: str, expected: str | None) -> None:
    assert normal_path(raw) == expected


def test_urls_stay_under_the_base() -> None:
    base = "http://127.0.0.1:9/v1"
    assert upstream_url(base, "files/a b", "limit=2") == "http://127.0.0.1:9/v1/files/a%20b?limit=2"
    assert upstream_url(base, "../x") is None
    assert upstream_url(base, "x@evil:80/y") == "http://127.0.0.1:9/v1/x@evil:80/y"
    assert same_upstream(base, "http://127.0.0.1:9/v1/x@evil:80/y")
    assert not same_upstream(base, "http://127.0.0.1:9/v10/x")
    assert not same_upstream(base, "http://127.0.0.1:10/v1/x")
    assert not same_upstream(base, "https://127.0.0.1:9/v1/x")
    assert not same_upstream(base, "http://evil@127.0.0.1:9/v1/x")


def test_what_passes_and_what_is_owned() -> None:
    assert classify("POST", "embeddings") is not None
    assert classify("DELETE", "models/ft-1") is None
    assert classify("GET", "chat/completions/x") is None
    assert classify("POST", "assistants") is None
    target = classify("GET", "files/file-1/content")
    assert target is not None and target.object_id == "file-1" and not target.inspects_answer
    listing = classify("GET", "fine_tuning/jobs")
    assert listing is not None and listing.listing and listing.kind == "fine_tuning.job"
    body = {
        "previous_response_id": "resp_1",
        "conversation": {"id": "conv_2"},
        "input": [{"content": [{"type": "input_file", "file_id": "file-3"}]}],
        "tools": [{"type": "file_search", "vector_store_ids": ["vs_4"]}],
        "metadata": {"note": "file-9 is not a reference"},
    }
    assert references(body) == {"resp_1", "conv_2", "file-3", "vs_4"}


@pytest.mark.parametrize("who", ["alice", "admin"])
def test_path_tricks_never_leave_the_upstreams_base(tenants: Tenants, who: str) -> None:
    """Each trick, with a tenant's key and with an admin key, as GET and POST."""
    key = tenants.admin if who == "admin" else tenants.keys[who]
    port = tenants.server.port
    for target in path_tricks(tenants.capture.port):
        for method in ("GET", "POST"):
            body = b"{}" if method == "POST" else None
            answer = raw_request(port, method, target, key, body)
            assert_json_refusal(*answer, where=f"{method} {target}")
    absolute = f"GET http://127.0.0.1:{tenants.capture.port}/v1/models HTTP/1.1\r\n"
    status, _headers, body = socket_request(
        port, absolute.encode() + f"host: x\r\nauthorization: Bearer {key}\r\n\r\n".encode()
    )
    assert status != 200 or json.loads(body)["data"][0]["owned_by"] == "test"  # ours, not theirs
    assert_nothing_escaped(tenants)


def test_unknown_endpoints_are_refused_not_forwarded(tenants: Tenants) -> None:
    for method, path in [
        ("GET", "/v1/assistants"),
        ("POST", "/v1/threads"),
        ("DELETE", "/v1/models/ft:gpt-4o:acme"),
        ("GET", "/v1/chat/completions/chatcmpl-1"),
        ("GET", "/v1/organization/api_keys"),
    ]:
        answer = tenants.request("alice", method, path)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_url"
    assert tenants.upstream.seen == []
    admin = tenants.request("admin", "GET", "/v1/assistants")
    assert admin.status_code == 200  # the operator reaches what the upstream serves
    assert tenants.upstream.seen == [("GET", "/v1/assistants")]


def test_passthrough_off(db_url: str) -> None:
    with Capture() as capture, FakeOpenAI() as upstream:
        running = Tenants(db_url, capture, upstream, passthrough="off")
        with running.server:
            client = running.client("alice")
            refused = running.request("admin", "POST", "/v1/embeddings", json={"input": "x"})
            assert refused.status_code == 404
            assert refused.json()["error"]["code"] == "passthrough_off"
            reply = client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content == "OK"
            assert client.models.list().data[0].id == "gpt-4o"
        running.close()
        assert [p for _, p in upstream.seen] == ["/v1/chat/completions", "/v1/models"]


# -- objects belong to the tenant that made them -------------------------------------------


def alices_objects(tenants: Tenants) -> dict[str, str]:
    alice = tenants.client("alice")
    made = {
        "file": alice.files.create(file=("a.jsonl", b'{"x": 1}\n'), purpose="batch").id,
        "response": alice.responses.create(model="gpt-4o", input="remember 42").id,
    }
    batch_input = b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", '
    batch_input += b'"body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}}\n'
    batch_file = alice.files.create(file=("b.jsonl", batch_input), purpose="batch").id
    made["batch"] = alice.batches.create(
        input_file_id=batch_file, endpoint="/v1/chat/completions", completion_window="24h"
    ).id
    made["conversation"] = alice.conversations.create().id
    made["vector_store"] = alice.vector_stores.create(name="notes").id
    return made


def test_each_stateful_family_is_the_creators_alone(tenants: Tenants) -> None:
    made = alices_objects(tenants)
    file_id, response_id = made["file"], made["response"]
    refused = [
        ("GET", f"/v1/files/{file_id}", None),
        ("GET", f"/v1/files/{file_id}/content", None),
        ("DELETE", f"/v1/files/{file_id}", None),
        ("GET", f"/v1/responses/{response_id}", None),
        ("GET", f"/v1/responses/{response_id}/input_items", None),
        ("DELETE", f"/v1/responses/{response_id}", None),
        ("GET", f"/v1/batches/{made['batch']}", None),
        ("POST", f"/v1/batches/{made['batch']}/cancel", {}),
        ("GET", f"/v1/conversations/{made['conversation']}", None),
        ("POST", f"/v1/conversations/{made['conversation']}", {"metadata": {}}),
        ("GET", f"/v1/vector_stores/{made['vector_store']}", None),
        ("DELETE", f"/v1/vector_stores/{made['vector_store']}", None),
        ("POST", "/v1/batches", {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}),
        ("POST", "/v1/vector_stores", {"name": "x", "file_ids": [file_id]}),
        ("POST", "/v1/responses/compact", {"model": "gpt-4o", "previous_response_id": response_id}),
        ("GET", "/v1/uploads/upload_1", None),
        ("POST", "/v1/uploads/upload_1/complete", {"part_ids": []}),
        ("GET", "/v1/fine_tuning/jobs/ftjob-1", None),
        ("POST", "/v1/fine_tuning/jobs", {"model": "gpt-4o", "training_file": file_id}),
        ("GET", "/v1/containers/cntr_1/files", None),
        ("GET", f"/v1/vector_stores/vs_none/files/{file_id}", None),
    ]
    seen_before = len(tenants.upstream.seen)
    for method, path, body in refused:
        answer = (
            tenants.request("bob", method, path, json=body)
            if body is not None
            else (tenants.request("bob", method, path))
        )
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"]["message"].startswith("No such object"), (method, path)
    assert tenants.upstream.seen[seen_before:] == []  # none of them was forwarded
    bob = tenants.client("bob")
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model="gpt-4o", previous_response_id=response_id, input="and?")
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model="gpt-4o", conversation=made["conversation"], input="and?")
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(
            model="gpt-4o",
            input=[{"role": "user", "content": [{"type": "input_file", "file_id": file_id}]}],
        )
    for family in ("files", "batches", "vector_stores"):
        assert bob.get(f"/{family}", cast_to=object)["data"] == []  # type: ignore[index]
    bob_file = bob.files.create(file=("mine.txt", b"bob"), purpose="assistants").id
    assert [f.id for f in bob.files.list()] == [bob_file]
    # The owner keeps every use of them, and the admin reaches them all.
    alice = tenants.client("alice")
    assert alice.files.content(file_id).content == b'{"x": 1}\n'
    assert alice.files.retrieve(file_id).id == file_id
    assert file_id in [f.id for f in alice.files.list()] and bob_file not in [
        f.id for f in alice.files.list()
    ]
    assert alice.responses.retrieve(response_id).id == response_id
    assert alice.responses.input_items.list(response_id).data
    follow = alice.responses.create(model="gpt-4o", previous_response_id=response_id, input="and?")
    assert alice.responses.retrieve(follow.id).id == follow.id  # recorded: the untrimmed path
    batch = alice.batches.retrieve(made["batch"])
    assert batch.output_file_id is not None
    assert b"custom_id" in alice.files.content(batch.output_file_id).content  # claimed
    with pytest.raises(openai.NotFoundError):
        bob.files.content(batch.output_file_id)
    assert alice.conversations.retrieve(made["conversation"]).id == made["conversation"]
    assert alice.vector_stores.retrieve(made["vector_store"]).id == made["vector_store"]
    admin = tenants.client("admin")
    assert {f.id for f in admin.files.list()} >= {file_id, bob_file}
    assert admin.responses.retrieve(response_id).id == response_id
    alice.files.delete(file_id)
    assert_nothing_escaped(tenants)


def test_streamed_responses_are_recorded_as_the_callers(tenants: Tenants) -> None:
    alice = tenants.client("alice")
    with alice.responses.stream(model="gpt-4o", input="stream it") as stream:
        final = stream.get_final_response()
    assert alice.responses.retrieve(final.id).id == final.id
    with pytest.raises(openai.NotFoundError):
        tenants.client("bob").responses.retrieve(final.id)


# -- one identity for every route --------------------------------------------------------


def ledger_users(db_url: str) -> list[str | None]:
    engine = create_engine(db_url)
    with engine.connect() as connection:
        users = [
            row[0] for row in connection.execute(select(LedgerRow.user).order_by(LedgerRow.id))
        ]
    engine.dispose()
    return users


@pytest.mark.parametrize("route", ["chat", "responses"])
def test_two_tenants_never_share_a_stored_user(tenants: Tenants, db_url: str, route: str) -> None:
    """Tenant ``acme:bob``, and tenant ``acme`` with end user ``bob``."""
    for tenant, headers in (("acme:bob", {}), ("acme", {"X-User-Id": "bob"})):
        client = tenants.client(tenant)
        if route == "chat":
            client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": "same words"}],
                extra_headers=headers,
            )
        else:
            client.responses.create(model="gpt-4o", input="same words", extra_headers=headers)
    assert ledger_users(db_url) == ["acme\\:bob", "acme:bob"]
    savings = tenants.request("admin", "GET", "/v1/savings?group_by=user").json()
    assert {row["group"] for row in savings["rows"]} == {"acme\\:bob", "acme:bob"}


def test_passthrough_objects_are_per_tenant_not_per_end_user(tenants: Tenants) -> None:
    colon = tenants.client("acme:bob")
    made = colon.files.create(file=("x.txt", b"x"), purpose="assistants").id
    acme = tenants.request("acme", "GET", f"/v1/files/{made}", headers={"X-User-Id": "bob"})
    assert acme.status_code == 404
    mine = tenants.client("acme").files.create(
        file=("y.txt", b"y"), purpose="assistants", extra_headers={"X-User-Id": "bob"}
    )
    again = tenants.request("acme", "GET", f"/v1/files/{mine.id}", headers={"X-User-Id": "eve"})
    assert again.status_code == 200  # the tenant's objects, whichever end user asks
    assert tenants.request("acme:bob", "GET", f"/v1/files/{mine.id}").status_code == 404
    assert tenant_user("acme:bob", None) != tenant_user("acme", None)


# -- headers uvicorn cannot parse, through a real serve process -------------------------------


def test_a_control_character_in_a_header_is_a_json_400(sqlite_url: str) -> None:
    with FakeOpenAI() as upstream:
        environ = {**os.environ, "OPENAI_API_KEY": UPSTREAM_KEY}
        options = ["--db", sqlite_url, "--upstream", upstream.base_url]
        with ServeProcess(*options, "--summarizer", "extractive", env=environ) as serve:
            for value in (b"a\x01b", b"a\x00b", b"a\x1bb", b"a\rb"):
                head = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-user-id: " + value + b"\r\n\r\n"
                status, headers, body = socket_request(serve.port, head)
                assert status == 400, value
                assert headers["content-type"] == "application/json"
                assert json.loads(body)["error"]["code"] == "invalid_http_request"
        assert upstream.seen == []


# -- done when: a real serve process, four tenants, every attempt refused ----------------------


def test_hostile_tenants_through_a_real_serve_process(db_url: str) -> None:
    """Four tenants and an admin on ``context-trimmer serve``: every attack is a 4xx JSON
    answer, no connection reaches another host, the upstream key is in no answer and no
    log line, and each tenant's own objects keep working."""
    store = Database(db_url)
    keys = {name: create_key(store, name)[0] for name in TENANTS}
    store.close()
    with Capture() as capture, FakeOpenAI() as upstream:
        environ = {**os.environ, "OPENAI_API_KEY": UPSTREAM_KEY}
        options = ["--db", db_url, "--upstream", upstream.base_url, "--summarizer", "extractive"]
        with ServeProcess(*options, "--key-cache-seconds", "0", env=environ) as serve:
            clients = {
                name: openai.OpenAI(base_url=serve.base_url, api_key=key, max_retries=0)
                for name, key in keys.items()
            }
            own = {
                name: (
                    client.files.create(
                        file=(f"{name}.txt", name.encode()), purpose="user_data"
                    ).id,
                    client.responses.create(model="gpt-4o", input=f"I am {name}").id,
                )
                for name, client in clients.items()
            }
            answers: list[tuple[int, dict[str, str], bytes]] = []

            def attempt(
                tenant: str, method: str, target: str, body: Any = None, **headers: str
            ) -> None:
                data = None if body is None else json.dumps(body).encode()
                answer = raw_request(serve.port, method, target, keys[tenant], data, **headers)
                answers.append(answer)
                assert_json_refusal(*answer, where=f"{tenant}: {method} {target}")

            for target in path_tricks(capture.port):  # absolute URLs, encoded dot segments...
                attempt("bob", "GET", target)
            alice_file, alice_response = own["alice"]
            for tenant in ("bob", "acme", "acme:bob"):
                attempt(tenant, "GET", f"/v1/files/{alice_file}")
                attempt(tenant, "GET", f"/v1/files/{alice_file}/content")
                attempt(tenant, "DELETE", f"/v1/files/{alice_file}")
                attempt(tenant, "GET", f"/v1/responses/{alice_response}")
                attempt(tenant, "GET", f"/v1/responses/{alice_response}/input_items")
                attempt(
                    tenant,
                    "POST",
                    "/v1/responses",
                    {"model": "gpt-4o", "previous_response_id": alice_response, "input": "more"},
                )
            colon_file, colon_response = own["acme:bob"]
            attempt("acme", "GET", f"/v1/files/{colon_file}/content", **{"X-User-Id": "bob"})
            attempt(
                "acme",
                "POST",
                "/v1/responses",
                {"model": "gpt-4o", "previous_response_id": colon_response, "input": "x"},
                **{"X-User-Id": "bob"},
            )
            attempt("acme:bob", "GET", f"/v1/responses/{own['acme'][1]}")
            assert len(answers) >= 30
            for name, client in clients.items():  # file lists hold the caller's files only
                assert [f.id for f in client.files.list()] == [own[name][0]]
            for tenant, headers in (("acme:bob", {}), ("acme", {"X-User-Id": "bob"})):
                clients[tenant].chat.completions.create(
                    model="gpt-4o",
                    messages=[{"role": "user", "content": "who am I"}],
                    extra_headers=headers,
                )
                clients[tenant].responses.create(
                    model="gpt-4o", input="who am I", extra_headers=headers
                )
            for name, client in clients.items():  # each tenant's own objects keep working
                file_id, response_id = own[name]
                assert client.files.content(file_id).content == name.encode()
                assert client.responses.retrieve(response_id).id == response_id
                follow = client.responses.create(
                    model="gpt-4o", previous_response_id=response_id, input="and then?"
                )
                assert client.responses.input_items.list(follow.id).data
                client.close()
            output = serve.output
    users = ledger_users(db_url)
    assert users.count("acme:bob") == 2  # tenant acme's end user bob: chat, then responses
    assert users.count("acme\\:bob") == 3  # tenant acme:bob: its first response, chat, responses
    assert capture.received == []
    for _method, path in upstream.seen:
        assert path.startswith("/v1/") and "_requests" not in path and "steal" not in path
    for _status, headers, body in answers:
        assert UPSTREAM_KEY not in json.dumps(headers) and UPSTREAM_KEY.encode() not in body
    assert UPSTREAM_KEY not in output
    assert all(h["authorization"] == f"Bearer {UPSTREAM_KEY}" for h in upstream.headers)


@pytest.mark.parametrize("parser", ["H11JSONProtocol", "HttpToolsJSONProtocol"])
def test_control_characters_are_refused_in_json_whichever_parser(
    sqlite_url: str, parser: str
) -> None:
    """h11 lets ``\\x01`` and DEL through to the app, httptools refuses them itself: the
    answer is a JSON 400 either way, and nothing is forwarded."""
    import uvicorn

    from context_trimmer.gateway._http import H11JSONProtocol
    from context_trimmer.gateway._httptools import HttpToolsJSONProtocol

    protocol = {"H11JSONProtocol": H11JSONProtocol, "HttpToolsJSONProtocol": HttpToolsJSONProtocol}
    with FakeOpenAI() as upstream:
        store = Database(sqlite_url)
        key = create_key(store, "acme")[0]
        config = GatewayConfig(
            db_url=sqlite_url,
            upstream=upstream.base_url,
            upstream_key_env=KEY_ENV,
            summarizer="extractive",
        )
        server = ServerThread(create_app(config, environ=ENVIRON))
        server.server = uvicorn.Server(
            uvicorn.Config(
                server.server.config.app,
                host="127.0.0.1",
                port=server.port,
                log_level="warning",
                lifespan="on",
                http=protocol[parser],
            )
        )
        server.thread = threading.Thread(target=server.server.run, daemon=True)
        with server:
            for name, value in [
                (b"x-user-id", b"a\x01b"),
                (b"x-user-id", b"a\x7fb"),
                (b"x-conversation-id", b"a\x0bb"),
                (b"x-anything", b"\x1b[31m"),
            ]:
                head = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                head += f"authorization: Bearer {key}\r\n".encode() + name + b": " + value
                status, headers, body = socket_request(server.port, head + b"\r\n\r\n")
                assert status == 400, (parser, value)
                assert headers["content-type"] == "application/json"
                assert json.loads(body)["error"]["code"] in (
                    "invalid_header",
                    "invalid_http_request",
                )
            tab = raw_request(server.port, "GET", "/v1/models", key, **{"x-note": "a\tb"})
            assert tab[0] == 200  # a tab is allowed in a header value
        store.close()
        assert upstream.seen == [("GET", "/v1/models")]
