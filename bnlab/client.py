"""A small HTTP client for the bnlab API, used by the `bnlab` CLI: requests, error messages a
person can act on, and the server-sent events of an experiment or a sweep.

It talks to the API only over HTTP (httpx) and imports nothing of the service, so the CLI works
against any bnlab server and starts fast (no torch).
"""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
# The server pings an idle event stream every 15 s; a read that waits this long is a dead link.
STREAM_READ_TIMEOUT = 45.0


class ApiError(Exception):
    """Something went wrong talking to the API; the message is one line for a person."""


@dataclass(frozen=True)
class Event:
    """One server-sent event: its name (`point`, `progress`, `status`, ...), id and JSON data."""

    name: str
    id: str | None
    data: Any


class Client:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response to a request; ApiError for anything but a 2xx."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ApiError(self._unreachable(error)) from None
        if response.is_error:
            raise ApiError(describe(response))
        return response

    def get(self, path: str, **params: Any) -> Any:
        query = {key: value for key, value in params.items() if value is not None}
        return self.request("GET", path, params=query).json()

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body, **kwargs).json()

    def events(self, path: str, last_event_id: str | None = None) -> Iterator[Event]:
        """The events of one connection to an event stream, until the server ends it."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
        timeout = httpx.Timeout(self.http.timeout.connect, read=STREAM_READ_TIMEOUT)
        try:
            with self.http.stream("GET", path, headers=headers, timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    # A server error may pass (a restart); a 4xx will not.
                    broken = StreamBroken if response.is_server_error else ApiError
                    raise broken(describe(response))
                yield from parse_events(response.iter_lines())
        except httpx.TransportError as error:
            raise StreamBroken(self._unreachable(error)) from None

    def _unreachable(self, error: httpx.TransportError) -> str:
        if isinstance(error, httpx.TimeoutException):
            return f"the bnlab API at {self.url} did not answer in time ({type(error).__name__})"
        cause = str(error) or type(error).__name__
        return (
            f"cannot reach the bnlab API at {self.url} ({cause}): is it running (`bnlab up`)? "
            "Choose another server with --url or BNLAB_URL"
        )


class StreamBroken(ApiError):
    """An event stream's connection failed; reconnecting may help."""


def describe(response: httpx.Response) -> str:
    """An error response as one line: the server's `detail` where it gave one."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # a validation error: where and what, per problem
        detail = "; ".join(_validation_problem(problem) for problem in detail)
    if not detail:
        detail = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    text = f"{detail}" if detail else f"the server answered {response.status_code}"
    if response.status_code == 401:
        text += " (set BNLAB_API_TOKEN or --token)"
    return text


def _validation_problem(problem: Any) -> str:
    if not isinstance(problem, dict):
        return str(problem)
    where = [str(part) for part in problem.get("loc", []) if part not in ("body", "query")]
    message = problem.get("msg", "invalid")
    return f"{'.'.join(where)}: {message}" if where else message


def parse_events(lines: Iterator[str]) -> Iterator[Event]:
    """Server-sent events from the lines of a text/event-stream (comments skipped)."""
    name, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield Event(name, event_id, _json_or_text("\n".join(data)))
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


def _json_or_text(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


def follow(
    client: Client, path: str, final: str = "status", retries: int = 5, pause: float = 1.0
) -> Iterator[Event]:
    """The events of a stream to its `final` event, reconnecting with Last-Event-ID when the
    connection breaks, so nothing is missed; StreamBroken after `retries` failures in a row."""
    last_event_id: str | None = None
    failures = 0
    while True:
        try:
            for event in client.events(path, last_event_id):
                failures = 0
                if event.id is not None:
                    last_event_id = event.id
                yield event
                if event.name == final:
                    return
            error = StreamBroken(f"the event stream {path} ended before its {final} event")
        except StreamBroken as broken:
            error = broken
        failures += 1
        if failures > retries:
            raise error
        time.sleep(pause)
