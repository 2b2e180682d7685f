"""`Client`: the service's APIs as Python calls, over the standard library's HTTP client.

Retries are bounded and only where repeating cannot do harm: a GET is retried when the
connection fails or the server answers 503; a POST (predict, infer) only on 503, which the
server gives before a response was produced (a broken connection after sending may mean the
request was served and counted against a quota, so it is not repeated). Waits grow
exponentially from `backoff`, or follow the server's `Retry-After` up to `max_wait`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from secure_maas.client.errors import (
    BY_STATUS,
    ClientError,
    ConnectionFailed,
    QuotaExceeded,
    ServerError,
    Unavailable,
)

DEFAULT_TIMEOUT_S = 30.0
_OIP_DATATYPES = {
    "bool": "BOOL",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}


class Client:
    """A consumer's (or auditor's) handle on one secure-maas server.

    `url` is the server's base URL (`http://127.0.0.1:8501`), `token` a bearer token from
    `secure-maas token issue`. `last_request_id` is the `X-Request-Id` of the last answer: the
    audit log records each request under it.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = 2,
        backoff: float = 0.2,
        max_wait: float = 5.0,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"not an http(s) URL: {url!r}")
        if retries < 0 or backoff < 0 or max_wait < 0:
            raise ValueError("retries, backoff and max_wait must not be negative")
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.last_request_id: str | None = None

    def __repr__(self) -> str:
        return f"Client({self.url!r})"  # never the token

    # -- TF Serving REST ------------------------------------------------------------------

    def predict(
        self,
        model: str,
        instances: Sequence[Any],
        version: int | None = None,
        label: str | None = None,
    ) -> list[Any]:
        """Row format: `instances` (one per row) -> `predictions`, one per row."""
        body = {"instances": _plain(instances)}
        answer = self._json(
            "POST", _model_path("/v1/models", model, version, label) + ":predict", body
        )
        return list(answer["predictions"])

    def predict_columns(
        self,
        model: str,
        inputs: Any,
        version: int | None = None,
        label: str | None = None,
    ) -> Any:
        """Columnar format: `inputs` (a tensor, or tensors by input name) -> `outputs`."""
        body = {"inputs": _plain(inputs)}
        answer = self._json(
            "POST", _model_path("/v1/models", model, version, label) + ":predict", body
        )
        return answer["outputs"]

    def status(self, model: str, version: int | None = None, label: str | None = None) -> Any:
        """TF Serving's model status (`model_version_status`)."""
        return self._json("GET", _model_path("/v1/models", model, version, label))

    def metadata(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> dict[str, Any]:
        """TF Serving's model metadata; the DP guarantee is under `secure_maas`."""
        answer: dict[str, Any] = self._json(
            "GET", _model_path("/v1/models", model, version, label) + "/metadata"
        )
        return answer

    def models(self) -> list[dict[str, Any]]:
        """The models (and active versions) this token may list."""
        return list(self._json("GET", "/v1/models")["models"])

    # -- Open Inference Protocol v2 -------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | None = None,
        *,
        outputs: Sequence[str] | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """OIP v2 infer with JSON tensors: arrays (or nested lists) by input name in, numpy
        arrays by output name out."""
        import numpy as np

        tensors = []
        for name, value in inputs.items():
            array = np.asarray(value)
            if array.dtype.name not in _OIP_DATATYPES:
                raise ValueError(f"input {name!r}: dtype {array.dtype} has no OIP datatype")
            tensors.append(
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": _OIP_DATATYPES[array.dtype.name],
                    "data": array.ravel().tolist(),
                }
            )
        body: dict[str, Any] = {"inputs": tensors}
        if outputs is not None:
            body["outputs"] = [{"name": name} for name in outputs]
        if request_id is not None:
            body["id"] = request_id
        answer = self._json(
            "POST", _model_path("/v2/models", model, version, None) + "/infer", body
        )
        by_type = {oip: np.dtype(dtype) for dtype, oip in _OIP_DATATYPES.items()}
        return {
            tensor["name"]: np.asarray(tensor["data"], dtype=by_type[tensor["datatype"]]).reshape(
                tensor["shape"]
            )
            for tensor in answer["outputs"]
        }

    def infer_metadata(self, model: str, version: int | None = None) -> dict[str, Any]:
        """OIP v2 model metadata."""
        answer: dict[str, Any] = self._json("GET", _model_path("/v2/models", model, version, None))
        return answer

    # -- audit ----------------------------------------------------------------------------

    def audit_page(self, **filters: Any) -> dict[str, Any]:
        """One page of `GET /admin/audit`: `{"events": [...], "next_after": seq | None}`.

        Filters: since, until, actor, model, action, decision, after, limit.
        """
        query = urllib.parse.urlencode({k: str(v) for k, v in filters.items() if v is not None})
        answer: dict[str, Any] = self._json("GET", "/admin/audit" + (f"?{query}" if query else ""))
        return answer

    def audit_events(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every matching event, oldest first, page after page (`limit` is the page size)."""
        after = filters.pop("after", None)
        while True:
            page = self.audit_page(**filters, after=after)
            yield from page["events"]
            after = page["next_after"]
            if after is None:
                return

    def audit(self, **filters: Any) -> list[dict[str, Any]]:
        """Every matching audit event (all pages), oldest first (needs `audit:read`)."""
        return list(self.audit_events(**filters))

    def audit_verify(self) -> dict[str, Any]:
        """The server's verification of the whole audit chain (`intact`, `bad_seq`, ...)."""
        answer: dict[str, Any] = self._json("GET", "/admin/audit/verify")
        return answer

    # -- service --------------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether the server says it can serve (database, keys, audit log)."""
        try:
            self._json("GET", "/readyz")
        except (Unavailable, ConnectionFailed):
            return False
        return True

    # -- transport ------------------------------------------------------------------------

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body, allow_nan=False).encode("utf-8")
        raw = self._send(method, path, data)
        return json.loads(raw) if raw else None

    def _send(self, method: str, path: str, data: bytes | None) -> bytes:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            try:
                return self._once(method, path, data, headers)
            except (Unavailable, ConnectionFailed) as error:
                retryable = isinstance(error, Unavailable) or method == "GET"
                if not retryable or attempt >= self.retries:
                    raise
                wait = self.backoff * (2**attempt)
                if isinstance(error, Unavailable) and error.retry_after:
                    wait = max(wait, float(error.retry_after))
                time.sleep(min(wait, self.max_wait))
                attempt += 1

    def _once(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> bytes:
        request = urllib.request.Request(  # noqa: S310 (the scheme is checked in __init__)
            self.url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                self.last_request_id = response.headers.get("X-Request-Id")
                payload: bytes = response.read()
                return payload
        except urllib.error.HTTPError as error:
            self.last_request_id = error.headers.get("X-Request-Id")
            with error:
                raise _error(error) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            self.last_request_id = None
            reason = getattr(exc, "reason", exc)
            raise ConnectionFailed(0, f"no answer from {self.url}: {reason}") from None


def _error(error: urllib.error.HTTPError) -> ClientError:
    request_id = error.headers.get("X-Request-Id")
    try:
        message = str(json.loads(error.read())["error"])
    except (ValueError, KeyError, TypeError, OSError):
        message = error.reason if isinstance(error.reason, str) else "error"
    kind = BY_STATUS.get(error.code, ServerError)
    if kind in (QuotaExceeded, Unavailable):
        retry = error.headers.get("Retry-After", "")
        seconds = int(retry) if retry.isdigit() else 0
        return kind(error.code, message, request_id=request_id, retry_after=seconds)
    return kind(error.code, message, request_id=request_id)


def _model_path(prefix: str, model: str, version: int | None, label: str | None) -> str:
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    path = f"{prefix}/{urllib.parse.quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{int(version)}"
    elif label is not None:
        path += f"/labels/{urllib.parse.quote(label, safe='')}"
    return path


def _plain(value: Any) -> Any:
    """numpy arrays (and nested ones) as lists, for JSON."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
