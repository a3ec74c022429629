"""What the passthrough forwards, and to whom an upstream object belongs.

Tenants share the gateway's one upstream key, so the upstream cannot keep them apart:
the gateway does. A request's normalised path (``_client.upstream_url``) is classified here:

- **stateless** endpoints pass through: ``models`` (GET), ``embeddings``,
  ``moderations``, ``audio/...``, ``images/...``;
- **owned** families hold objects: ``files``, ``responses`` (stored responses and
  their input items), ``conversations``, ``batches``, ``vector_stores``, ``uploads``,
  ``fine_tuning/jobs``, ``containers``. A POST to the family's root creates one: the
  id in the answer is recorded as the caller's (``_store.ownership``). Any request naming an
  object (``files/{id}``, ``files/{id}/content``, ``responses/{id}/input_items``...)
  goes through only when the caller owns it, and a segment after it that is another
  tenant's object refuses it too; a list (GET of the root) is filtered to the caller's
  objects. Everyone else gets the upstream's own kind of 404, as if it did not exist;
- anything else is refused (404), never forwarded.

Objects are also named in JSON bodies (``previous_response_id``, ``conversation``,
``file_id``, ``input_file_id``, ``vector_store_ids``...): :func:`references` finds them,
and a body naming an object the caller does not own is refused the same way. Files the
upstream makes for an owned object (a batch's output and error files, a fine-tuning
job's result files, the file an upload completes into) become the caller's when the
answer that names them passes through. An admin key reaches everything.

The tenant is the key's user (:func:`~._gateway_guard.tenant_user` without an end user):
the end users of one tenant share its objects, as they share its upstream account.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from ._guard import error_response

__all__ = ["OWNED_FAMILIES", "STATELESS", "Target", "claimed", "classify", "references"]

STATELESS = ("models", "embeddings", "moderations", "audio", "images")
OWNED_FAMILIES = {
    "files": "file",
    "responses": "response",
    "conversations": "conversation",
    "batches": "batch",
    "vector_stores": "vector_store",
    "uploads": "upload",
    "fine_tuning/jobs": "fine_tuning.job",
    "containers": "container",
}
ACTIONS = {"responses/compact", "responses/input_tokens"}
"""POSTs under an owned family that name no object in their path (their body is checked)."""
REFERENCE_KEYS = frozenset(
    {
        "file_id",
        "file_ids",
        "input_file_id",
        "training_file",
        "validation_file",
        "previous_response_id",
        "response_id",
        "conversation",
        "conversation_id",
        "vector_store_id",
        "vector_store_ids",
        "upload_id",
        "batch_id",
        "container",
        "container_id",
    }
)
"""Body fields (at any depth) whose string value, list of strings or ``{"id": ...}``
names an upstream object."""
CLAIMED_KEYS = ("output_file_id", "error_file_id", "result_files")
"""Answer fields naming files the upstream made for the caller's own object."""
UNREAD_BODIES = ("embeddings", "moderations", "audio")
"""Families whose request bodies stream as they come (they name no objects)."""


@dataclass(frozen=True)
class Target:
    """A request's place among the endpoints: its family, the object it names (if any)
    and the segments after it."""

    family: str
    owned: bool
    object_id: str | None = None
    rest: tuple[str, ...] = ()
    create: bool = False
    listing: bool = False

    @property
    def kind(self) -> str:
        return OWNED_FAMILIES.get(self.family, self.family)

    @property
    def reads_body(self) -> bool:
        """Whether a JSON request body is read (and its references checked) first."""
        return self.family not in UNREAD_BODIES

    @property
    def inspects_answer(self) -> bool:
        """Whether the answer is read whole: a create (its id is recorded), a list (it is
        filtered), or an object whose answer may name files made for it."""
        if not self.owned or (self.rest and self.rest[-1] == "content"):
            return False
        return self.create or self.listing or self.object_id is not None


def classify(method: str, path: str) -> Target | None:
    """The target of ``method`` on normalised ``path``, or None: not forwarded."""
    segments = path.split("/") if path else []
    if not segments:
        return None
    if segments[0] in STATELESS:
        if segments[0] == "models" and method not in ("GET", "HEAD"):
            return None  # deleting a fine-tuned model is the operator's business
        if segments[0] in ("audio", "images") and len(segments) < 2:
            return None
        return Target(segments[0], owned=False)
    if path in ACTIONS:
        return Target(path, owned=False) if method == "POST" else None
    width = 2 if segments[:2] == ["fine_tuning", "jobs"] else 1
    family = "/".join(segments[:width])
    if family not in OWNED_FAMILIES:
        return None
    after = tuple(segments[width:])
    if not after:
        if method == "POST":
            return Target(family, owned=True, create=True)
        if method == "GET":
            return Target(family, owned=True, listing=True)
        return None
    return Target(family, owned=True, object_id=after[0], rest=after[1:])


def references(body: Any) -> set[str]:
    """The object ids a JSON request body names (see :data:`REFERENCE_KEYS`)."""
    found: set[str] = set()
    for key, value in _items(body):
        if key in REFERENCE_KEYS:
            found.update(_ids(value))
    return found


def claimed(answer: Any) -> set[str]:
    """Ids of files the upstream made for the object in ``answer`` (see
    :data:`CLAIMED_KEYS`); an upload's completed file."""
    if not isinstance(answer, dict):
        return set()
    found: set[str] = set()
    for key in CLAIMED_KEYS:
        found.update(_ids(answer.get(key)))
    made = answer.get("file")
    if answer.get("object") == "upload" and isinstance(made, dict):
        found.update(_ids(made))
    return found


def _items(value: Any, depth: int = 0) -> Iterator[tuple[str, Any]]:
    if depth > 64:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from _items(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _items(item, depth + 1)


def _ids(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value} if value else set()
    if isinstance(value, dict):
        return _ids(value.get("id"))
    if isinstance(value, list):
        return {i for item in value for i in _ids(item)}
    return set()


def no_such_object(object_id: str) -> JSONResponse:
    """A 404 for an object that does not exist: what a tenant is told about another
    tenant's object (worded as the upstream words its own, whose kind it does not name)."""
    return error_response(404, f"No such object: {object_id}", param="id", code="not_found")


def not_forwarded(method: str, path: str) -> JSONResponse:
    return error_response(
        404,
        f"Unknown path: {method} /v1/{path}. The gateway forwards the OpenAI endpoints it "
        "knows (models, embeddings, moderations, audio, images, and the caller's own files, "
        "responses, conversations, batches, vector stores, uploads, fine-tuning jobs and "
        "containers); see SECURITY.md.",
        code="unknown_url",
    )
