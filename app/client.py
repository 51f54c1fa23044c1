"""A small client of the HINT TorchServe endpoint ``POST /predictions/hint``.

>>> c = HintClient("http://127.0.0.1:8080", token_file="key_file.json")      # doctest: +SKIP
>>> r = c.explain("cat.jpg", concepts=["n02120997"], return_maps=True)        # doctest: +SKIP
>>> c.neuron(45)["concepts"][0]                                               # doctest: +SKIP

Every failure is a :class:`HintError` whose ``str`` is one readable line, meant to be shown to a
person as it is: :class:`ServiceUnreachable` (connection refused, timeout), :class:`ServiceError`
(an HTTP error status with the server's own message), or a plain :class:`HintError` (bad input,
an answer that is not the JSON the endpoint documents).
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"
DEFAULT_MODEL = "hint"
START_HINT = "start it with `make serve`"


class HintError(Exception):
    """Anything that went wrong talking to the endpoint; ``str(e)`` is one readable line."""


class ServiceUnreachable(HintError):
    """Nothing answered at the endpoint (connection refused, DNS, timeout)."""


class ServiceError(HintError):
    """The endpoint answered with an HTTP error status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def read_token_file(path: str | Path) -> str | None:
    """The inference key from a TorchServe ``key_file.json`` (``["inference"]["key"]``); None when the
    file is absent. A file that exists but has no such key is a :class:`HintError`."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
        key = data["inference"]["key"]
    except (OSError, ValueError, KeyError, TypeError):
        raise HintError(f'{p}: not a TorchServe key file (no ["inference"]["key"])') from None
    if not isinstance(key, str) or not key:
        raise HintError(f"{p}: empty inference key")
    return key


def image_bytes(image: bytes | str | Path | Image.Image | np.ndarray) -> bytes:
    """Encoded image bytes to send: a file's bytes as they are, PIL/numpy images as PNG."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if isinstance(image, str | Path):
        try:
            return Path(image).read_bytes()
        except OSError as e:
            raise HintError(f"cannot read image {image}: {e.strerror or e}") from None
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise HintError(f"unsupported image type {type(image).__name__}")


def _error_message(resp: requests.Response) -> str:
    """The server's own message from an error answer: TorchServe's ``{"code", "type", "message"}``,
    a handler's ``{"error": ...}``, or the start of the body."""
    text = resp.text.strip()
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if isinstance(body, dict):
        for k in ("message", "error", "detail"):
            v = body.get(k)
            if isinstance(v, dict):
                v = v.get("message") or json.dumps(v)
            if v:
                return str(v)
    return " ".join(text.split())[:300] or resp.reason or "no message"


class HintClient:
    """Calls the endpoint; token from ``token``, else read (fresh, every request) from ``token_file``.

    ``timeout`` is the read timeout in seconds (an explanation on CPU takes a few seconds),
    ``connect_timeout`` the time allowed to open the connection.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        token: str | None = None,
        token_file: str | Path | None = None,
        model: str = DEFAULT_MODEL,
        timeout: float = 60.0,
        connect_timeout: float = 3.0,
        session: requests.Session | None = None,
    ):
        self.endpoint = endpoint.rstrip("/")
        self.model = model
        self.token = token or None
        self.token_file = Path(token_file) if token_file else None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.session = session or requests.Session()
        self.session.trust_env = False  # a local service: never through an HTTP(S)_PROXY

    @classmethod
    def from_env(cls, **overrides: Any) -> HintClient:
        """A client configured by HINT_ENDPOINT, HINT_TOKEN and HINT_TOKEN_FILE (keyword overrides win)."""
        kw: dict[str, Any] = {
            "endpoint": os.environ.get("HINT_ENDPOINT") or DEFAULT_ENDPOINT,
            "token": os.environ.get("HINT_TOKEN") or None,
            "token_file": os.environ.get("HINT_TOKEN_FILE") or None,
        }
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(kw.pop("endpoint"), **kw)

    @property
    def url(self) -> str:
        return f"{self.endpoint}/predictions/{self.model}"

    def _headers(self) -> dict[str, str]:
        token = self.token or (read_token_file(self.token_file) if self.token_file else None)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def describe_auth(self) -> str:
        if self.token:
            return "token given"
        if self.token_file:
            return f"token from {self.token_file}" + ("" if self.token_file.is_file() else " (not there yet)")
        return "no token"

    def _post(self, payload: dict) -> Any:
        try:
            resp = self.session.post(
                self.url, json=payload, headers=self._headers(), timeout=(self.connect_timeout, self.timeout)
            )
        except requests.Timeout:
            raise ServiceUnreachable(
                f"service unreachable at {self.endpoint}: no answer within {self.timeout:g} s — "
                f"is it running? {START_HINT}"
            ) from None
        except requests.ConnectionError:
            raise ServiceUnreachable(f"service unreachable at {self.endpoint} — {START_HINT}") from None
        except requests.RequestException as e:
            raise ServiceUnreachable(
                f"service unreachable at {self.endpoint} ({type(e).__name__}) — {START_HINT}"
            ) from None
        if resp.status_code >= 400:
            msg = _error_message(resp)
            if resp.status_code in (401, 403):
                where = (
                    f"from {self.token_file}"
                    if self.token_file
                    else "(none given)"
                    if not self.token
                    else "given"
                )
                msg = (
                    f"{msg} — the inference token {where} was rejected; TorchServe writes a new one to "
                    "key_file.json where it starts: pass --token-file PATH or --token KEY"
                )
            elif resp.status_code == 404:
                msg = f"{msg} — is the model '{self.model}' registered? {START_HINT}"
            elif resp.status_code == 413:
                msg = f"{msg} — the request is larger than the server accepts; try a smaller image"
            kind = "request rejected" if resp.status_code < 500 else "server error"
            raise ServiceError(resp.status_code, f"{kind} (HTTP {resp.status_code}): {msg}")
        try:
            body = resp.json()
        except ValueError:
            raise HintError(
                f"the service at {self.url} did not answer JSON: {' '.join(resp.text.split())[:200]!r}"
            ) from None
        if isinstance(body, list) and len(body) == 1:  # a batch of one
            body = body[0]
        if not isinstance(body, dict):
            raise HintError(f"the service at {self.url} answered {type(body).__name__}, not a JSON object")
        if "error" in body and "concepts" not in body:  # a handler's per-request error
            raise ServiceError(resp.status_code, f"request rejected: {body['error']}")
        return body

    def explain(
        self,
        image: bytes | str | Path | Image.Image | np.ndarray,
        *,
        concepts: list[str] | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        return_maps: bool = False,
        ablate: list[int] | None = None,
        **options: Any,
    ) -> dict:
        """The explanation of one image (see docs/api.md); options left None take the server's defaults
        (``concepts=["all"]`` for every bank concept; more options, e.g. ``ablate_probe_only``,
        ``image_neurons``, ``permutations``, ``seed``, ``regions``, are passed as they are)."""
        payload: dict[str, Any] = {"image": base64.b64encode(image_bytes(image)).decode("ascii")}
        if concepts:
            payload["concepts"] = list(concepts)
        if top_k is not None:
            payload["top_k"] = int(top_k)
        if threshold is not None:
            payload["threshold"] = float(threshold)
        if return_maps:
            payload["return_maps"] = True
        if ablate:
            payload["ablate"] = [int(n) for n in ablate]
        payload.update({k: v for k, v in options.items() if v is not None})
        body = self._post(payload)
        if "concepts" not in body or "prediction" not in body:
            raise HintError(
                f"the service at {self.url} answered without 'prediction'/'concepts': keys {sorted(body)}"
            )
        return body

    def neuron(self, neuron: int) -> dict:
        """One neuron's Shapley value for every concept, ranked (``Explainer.neuron``)."""
        body = self._post({"neuron": int(neuron)})
        if "concepts" not in body:
            raise HintError(f"the service at {self.url} answered without 'concepts': keys {sorted(body)}")
        return body

    def ping(self) -> bool:
        """True when TorchServe's ``GET /ping`` answers at all (healthy or not); never raises."""
        try:
            self.session.get(f"{self.endpoint}/ping", timeout=(self.connect_timeout, 5))
            return True
        except requests.RequestException:
            return False
