"""HTTP client of the ``controlplane`` CLI: stdlib ``urllib`` only, no event loop.

Every failure becomes a :class:`CliError` carrying the text to print and the exit code:
:class:`ApiError` for an HTTP error answer (the server's ``code`` and ``message``),
:class:`Unreachable` when nothing answers. The bearer token goes into the ``Authorization``
header and nowhere else: not into messages, not into ``repr``, and never across a redirect.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "CliError",
    "ControlPlaneClient",
    "Reply",
    "Unreachable",
    "redact_url",
]

DEFAULT_URL: Final = "http://127.0.0.1:8080"
USER_AGENT: Final = "controlplane-cli"


class CliError(Exception):
    """A failure to report to the user: ``str(exc)`` is the text, ``exit_code`` the status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class Unreachable(CliError):
    """Nothing answered at the URL (refused, unresolvable, timed out)."""


class ApiError(CliError):
    """The server answered with an error: its status, stable code, message and details."""

    def __init__(self, status: int, code: str, message: str, details: Mapping[str, Any]):
        super().__init__(f"{code} (HTTP {status}): {message}")
        self.status = status
        self.code = code
        self.server_message = message
        self.details = dict(details)


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise CliError(f"server answered HTTP {self.status} with invalid JSON") from None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def redact_url(url: str) -> str:
    """The URL without user:password (safe to print)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def _checked_token(token: str | None) -> str | None:
    """The token without surrounding whitespace (a token file's newline, a CRLF file's \\r);
    CliError for one that cannot be a header value, never quoting it (urllib's error did)."""
    if token is None:
        return None
    token = token.strip()
    if token[:7].lower() == "bearer ":
        raise CliError("--token / CONTROLPLANE_TOKEN is the token alone, without 'Bearer '", 2)
    if not token or any(not 0x21 <= ord(c) <= 0x7E for c in token):
        raise CliError("--token / CONTROLPLANE_TOKEN is empty or holds a space, a control or a "
                       "non-ASCII character (the token is not printed)", 2)  # fmt: skip
    return token


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are errors: following one would carry the token to another URL."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class ControlPlaneClient:
    """Talks to one control plane at ``url`` (``http(s)://host:port``), as ``token``."""

    def __init__(
        self, url: str = DEFAULT_URL, token: str | None = None, *, timeout_s: float = 30.0
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CliError(
                f"--url must be http(s)://host:port, got {redact_url(url)!r}", exit_code=2
            )
        if parts.username is not None or parts.password is not None:  # urllib sent neither
            raise CliError(
                f"--url must not carry user:password@ (got {redact_url(url)!r}): the API takes "
                "a bearer token, --token or CONTROLPLANE_TOKEN", exit_code=2,
            )  # fmt: skip
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._token = _checked_token(token)
        self._opener = urllib.request.build_opener(_NoRedirect())

    def __repr__(self) -> str:  # never the token
        return f"ControlPlaneClient(url={redact_url(self.url)!r})"

    # -- transport -----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: Sequence[str],
        *,
        query: Mapping[str, str | Sequence[str] | None] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Reply:
        """One request; ``path`` segments are percent-encoded. Raises ApiError/Unreachable."""
        url = self.url + "/" + "/".join(urllib.parse.quote(seg, safe="") for seg in path)
        pairs = [(k, v) for k, v in (query or {}).items() if v is not None]
        if pairs:
            url += "?" + urllib.parse.urlencode(pairs, doseq=True)
        headers = {"Accept": accept, "User-Agent": USER_AGENT}
        if body is not None:
            headers["Content-Type"] = content_type
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        where = redact_url(self.url)
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                return Reply(resp.status, resp.headers.get_content_type(), resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                raise _api_error(exc) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
            raise Unreachable(f"cannot reach control plane at {where}: {text}") from None
        except TimeoutError:
            raise Unreachable(
                f"cannot reach control plane at {where}: no answer within {self.timeout_s:g}s "
                "(--timeout raises it: a whole-log audit verify of a large log takes longer)"
            ) from None
        except OSError as exc:
            text = exc.strerror or type(exc).__name__
            raise Unreachable(f"cannot reach control plane at {where}: {text}") from None

    def _json(self, method: str, *path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def _pages(
        self,
        path: Sequence[str],
        query: dict[str, Any],
        limit: int | None,
        cursor: str | None = None,
    ) -> list[Any]:
        items: list[Any] = []
        while True:
            page = self._json("GET", *path, query={**query, "cursor": cursor})
            items.extend(page.get("items", []))
            cursor = page.get("next")
            if not cursor or (limit is not None and len(items) >= limit):
                return items[:limit] if limit is not None else items

    # -- policies ------------------------------------------------------------------------------

    def apply_policy(self, document: bytes, content_type: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "POST", "v1", "policies", body=document, content_type=content_type
        )
        return result

    def preview_policy(self, document: bytes, content_type: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "POST", "v1", "policies", "preview", body=document, content_type=content_type
        )
        return result

    def list_policies(self, *, include_retired: bool = False) -> list[dict[str, Any]]:
        query = {"include_retired": "true"} if include_retired else {}
        return self._pages(("v1", "policies"), query, None)

    def get_policy(self, policy_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "v1", "policies", policy_id)
        return result

    def policy_versions(self, policy_id: str) -> list[dict[str, Any]]:
        return self._pages(("v1", "policies", policy_id, "versions"), {}, None)

    def rollback_policy(
        self, policy_id: str, to_version: int, *, reason: str | None = None
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {"to": to_version}
        if reason is not None:
            fields["reason"] = reason
        body = json.dumps(fields).encode()
        result: dict[str, Any] = self._json(
            "POST", "v1", "policies", policy_id, "rollback", body=body
        )
        return result

    def transfer_policy(self, policy_id: str, team: str, *, reason: str) -> dict[str, Any]:
        """An admin hands the policy id to ``team`` (docs/security.md#transfers)."""
        body = json.dumps({"team": team, "reason": reason}).encode()
        result: dict[str, Any] = self._json(
            "POST", "v1", "policies", policy_id, "transfer", body=body
        )
        return result

    def retire_policy(self, policy_id: str, *, reason: str | None = None) -> dict[str, Any]:
        query = {} if reason is None else {"reason": reason}
        result: dict[str, Any] = self._json("DELETE", "v1", "policies", policy_id, query=query)
        return result

    def wave_action(self, policy_id: str, action: str) -> dict[str, Any]:
        """``promote`` / ``pause`` / ``resume`` (docs/policies.md#waves)."""
        result: dict[str, Any] = self._json("POST", "v1", "policies", policy_id, action)
        return result

    def rollout_status(self, policy_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "v1", "policies", policy_id, "rollout")
        return result

    def rollout_events(self, policy_id: str) -> Iterator[dict[str, Any]]:
        """Each ``rollout`` event of ``GET /v1/policies/{id}/rollout/stream`` (server-sent
        events, docs/api.md#rollout-stream) until the server ends the stream. A read waits
        at most ``timeout_s`` (the server sends a heartbeat every 15 s). Raises like
        :meth:`request`."""
        url = f"{self.url}/v1/policies/{urllib.parse.quote(policy_id, safe='')}/rollout/stream"
        headers = {"Accept": "text/event-stream", "User-Agent": USER_AGENT}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(url, method="GET", headers=headers)
        where = redact_url(self.url)
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                name, data = "message", ""
                for raw in resp:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        data += line[6:]
                    elif not line:
                        if name == "end":
                            return
                        if name == "rollout" and data:
                            yield dict(json.loads(data))
                        name, data = "message", ""
        except urllib.error.HTTPError as exc:
            with exc:
                raise _api_error(exc) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise Unreachable(f"rollout stream from {where} broke: {exc}") from None

    # -- sessions ------------------------------------------------------------------------------

    def list_sessions(
        self,
        *,
        selector: Sequence[str] = (),
        kind: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        upstream_id: str | None = None,
    ) -> list[dict[str, Any]]:
        page = min(limit, 1000) if limit is not None else 1000
        query: dict[str, Any] = {"selector": list(selector) or None, "kind": kind}
        query.update(state=state, limit=str(page), upstream_id=upstream_id)
        return self._pages(("v1", "sessions"), query, limit)

    def get_session(self, session_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "v1", "sessions", session_id)
        return result

    def session_log(
        self, session_id: str, *, page: int = 1000, after: int = 0
    ) -> list[dict[str, Any]]:
        """Every entry (``after``: those after seq ``after``), following the log's pages
        (``page`` entries per request)."""
        path, cursor = ("v1", "sessions", session_id, "log"), f"seq-{after}" if after else None
        return self._pages(path, {"limit": str(page)}, None, cursor)

    def relabel_session(self, session_id: str, labels: Mapping[str, str | None]) -> dict[str, Any]:
        body = json.dumps({"labels": dict(labels)}).encode()
        result: dict[str, Any] = self._json(
            "PATCH", "v1", "sessions", session_id, "labels", body=body
        )
        return result

    # -- experiments and audit -----------------------------------------------------------------

    def experiment(self, key: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "v1", "experiments", key)
        return result

    def assignments(self, key: str) -> list[dict[str, Any]]:
        return self._pages(("v1", "experiments", key, "assignments"), {}, None)

    def assignments_csv(self, key: str) -> str:
        path = ("v1", "experiments", key, "assignments")
        return self.request("GET", path, query={"format": "csv"}, accept="text/csv").text()

    def verify_audit(
        self, session_id: str | None = None, *, public_keys: Sequence[str] = ()
    ) -> dict[str, Any]:
        """The server's answer: {"items", "ok", "checkpoints", "source", "next"}."""
        query = {"session": session_id, "public_key": list(public_keys) or None}
        result: dict[str, Any] = self._json("GET", "v1", "audit", "verify", query=query)
        return result

    def config_at(
        self, session_id: str, at: float, *, public_keys: Sequence[str] = ()
    ) -> dict[str, Any]:
        query = {"at": repr(at), "public_key": list(public_keys) or None}
        path = ("v1", "sessions", session_id, "config-at")
        result: dict[str, Any] = self._json("GET", *path, query=query)
        return result


def _api_error(exc: urllib.error.HTTPError) -> ApiError:
    status = exc.code
    if 300 <= status < 400:
        location = exc.headers.get("Location", "?")
        return ApiError(
            status,
            "redirect",
            f"the server redirects to {redact_url(location)}; pass the final URL as --url",
            {},
        )
    try:
        raw = exc.read()
    except OSError:
        raw = b""
    try:
        error = json.loads(raw)["error"]
        code, message = str(error["code"]), str(error["message"])
        details = error.get("details") or {}
        return ApiError(status, code, message, details if isinstance(details, dict) else {})
    except (ValueError, KeyError, TypeError):
        text = ""
        if exc.headers.get_content_type().startswith("text/"):
            text = " ".join(raw.decode("utf-8", "replace").split())[:200]
        parts = urllib.parse.urlsplit(redact_url(exc.url or ""))
        where = f"{parts.scheme}://{parts.netloc}" if parts.netloc else "the server"
        return ApiError(
            status, f"http_{status}",
            f"{text or f'HTTP {status} {exc.reason}'} (not a control-plane error answer: a proxy "
            f"in between, or {where} is not a control plane; check --url / CONTROLPLANE_URL)",
            {},
        )  # fmt: skip
