"""TorchServe handler for HINT: prediction, concept chain, concept scores, boxes and Shapley neurons.

Requests are parsed and validated by :func:`hint.serve.request.parse_request` (docs/api.md) and answered by
:meth:`hint.explain.explainer.Explainer.answer`. Each request of a batch gets one answer, the explanation
(docs/response.schema.json) or its own JSON error and status; valid images share one forward pass (an
image with a network ablation runs in it twice). A bad bank fails the worker start with one line. The
archive (``make archive``) holds this file, the bank (with its ``exemplars.safetensors`` when it has
exemplars, which ``{"neuron": N}`` answers with; with its ``hierarchy.json`` when it has its own
hierarchy; else the WordNet default is used; with ``backbone-weights.pt``/``.safetensors`` when its
backbone was built from a weights file, sha256 checked against the manifest before it is read; else the
backbone's named weights are used) and the ``hint`` package; options: :data:`DEFAULTS`.

Routes: ``/predictions/hint`` and ``/explanations/hint`` answer alike (TorchServe 0.12's frontend only
adds the request header ``explain: False`` / ``True``; the handler does not read it). Under a KServe
envelope (config.properties ``service_envelope=kserve`` or ``kservev2``) TorchServe wraps this entry
point: the envelope hands over the ``instances`` (v1) or ``inputs`` (v2) of one request
(:func:`hint.serve.request.parse_envelope`) and wraps the answers it gets back; :func:`handle` sees which
envelope called it (:func:`envelope_of`) and answers one item per instance or input (docs/api.md,
"KServe").
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

from hint._utils.text import one_line
from hint.explain.explainer import SERVING
from hint.serve.images import release_memory
from hint.serve.options import OPTIONS, Limits, RequestError, bank_concepts
from hint.serve.request import ENVELOPES, ExplainRequest, NeuronRequest, parse_envelope, parse_request

logger = logging.getLogger(__name__)

_LIMITS = Limits()

#: handler options (``handler:`` in model-config.yaml) and their defaults
DEFAULTS = {
    "bank": ".",  # the bank folder, relative to the model dir (the archive's extra files)
    # what a request may be (hint.serve.options.Limits: header pixels, decoded pixels, bytes, KServe instances)
    "max_pixels": _LIMITS.max_pixels,
    "max_decode_pixels": _LIMITS.max_decode_pixels,
    "max_bytes": _LIMITS.max_bytes,
    "max_instances": _LIMITS.max_instances,
    "max_batch": 64,  # safety cap on images in one forward pass
    "torch_threads": 0,  # 0: leave torch's default
    # boxes on a box_grid-pixel grid (0: the model's input size), activations by one matmul; the defaults are
    # hint.explain.explainer.SERVING, what the evaluations measure (hint.explain.explainer.Explainer)
    "fast": SERVING["fast"],
    "box_grid": SERVING["box_grid"],
    # a request's defaults for these options (hint.serve.options.OPTIONS declares them): set here to change them
    "default_top_k": OPTIONS["top_k"].default,
    "default_threshold": OPTIONS["threshold"].default,
    "log_timings": False,  # log preprocess / inference / postprocess milliseconds of every batch
}


@dataclass
class Job:
    """One request of the batch: parsed (``request``), answered (``result``) or failed (``error``)."""

    request: ExplainRequest | NeuronRequest | None = None
    error: RequestError | None = None
    result: dict | None = None


class HintHandler(BaseHandler):
    """Backbone + concept bank from the model dir; explain images, or answer the reverse direction."""

    DEFAULTS = DEFAULTS
    OPTIONS: tuple[str, ...] | None = (
        None  # request options accepted (None: all of hint.serve.options.OPTIONS)
    )
    envelope: str | None = None  # the KServe envelope of the batch being answered (handle)

    def initialize(self, context):
        """Load the bank (sha256 verified) and its backbone; any problem fails the start with one line."""
        self.context, self.cfg = context, dict(self.DEFAULTS)
        gpu = context.system_properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else "cpu")
        try:
            cfg = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
            if not isinstance(cfg, dict):
                raise ValueError("model-config.yaml 'handler' must be a mapping")
            if unknown := sorted(set(cfg) - set(self.DEFAULTS)):
                raise ValueError(
                    f"unknown handler option(s) {unknown} in model-config.yaml; known: {sorted(self.DEFAULTS)}"
                )
            self.cfg.update(cfg)
            if int(self.cfg["torch_threads"]) > 0:
                torch.set_num_threads(int(self.cfg["torch_threads"]))
            self.limits = self._load(Path(context.system_properties["model_dir"]))
        except Exception as e:  # noqa: BLE001 - every start problem becomes one readable line
            message = f"HINT handler cannot start: {one_line(str(e) or type(e).__name__)}"
            logger.error(message)
            raise RuntimeError(message) from None
        self.initialized = True

    def limits_for(self, input_size: int, **kw) -> Limits:
        """The request limits from the handler options (``work_size``: twice the model's input)."""
        c = self.cfg
        return Limits(
            max_bytes=int(c["max_bytes"]),
            max_pixels=int(c["max_pixels"]),
            max_decode_pixels=int(c["max_decode_pixels"]),
            work_size=2 * input_size,
            defaults={"top_k": int(c["default_top_k"]), "threshold": float(c["default_threshold"])},
            options=self.OPTIONS,
            max_instances=int(c["max_instances"]),
            **kw,
        )

    def _load(self, model_dir: Path) -> Limits:
        from hint.explain.explainer import Explainer

        # the bank (every sha256 verified) with its hierarchy, and the backbone it names: a bank built from a
        # weights file takes the archive's backbone-weights.* (sha256 checked before it is read), never a path
        # recorded at build time; BankError with one line otherwise
        self.explainer = Explainer.from_bank(
            (model_dir / str(self.cfg["bank"])).resolve(),
            device=self.device,
            fast=bool(self.cfg["fast"]),
            box_grid=int(self.cfg["box_grid"]) or None,
            recorded=False,
        )
        backbone, bank, self.hierarchy = self.explainer.backbone, self.explainer.bank, self.explainer.h
        probs, _, z = self.explainer.forward([Image.new("RGB", (backbone.input_size,) * 2)])  # warm-up
        bank.check_backbone(backbone.name, backbone.layer, int(z.shape[1]))
        self.hierarchy.check_outputs(int(probs.shape[1]), f"backbone {backbone.name}")
        logger.info(
            "HINT handler ready: %s:%s (weights %s), bank %s (%d concepts), torch threads %d",
            backbone.name,
            backbone.layer,
            backbone.weights,
            bank.id,
            len(bank.concepts),
            torch.get_num_threads(),
        )
        return self.limits_for(
            backbone.input_size, channels=int(z.shape[1]), concept=bank_concepts(self.hierarchy, bank)
        )

    def handle(self, data, context, envelope: str | None = None):
        """preprocess -> inference -> postprocess; one answer per request, whatever happens.

        ``envelope``: the KServe envelope TorchServe wraps the handler in (``kserve``, ``kservev2``), whose
        ``data`` are one request's instances or inputs: one answer per item, wrapped by the envelope."""
        self.context, self.envelope, t0 = context, envelope, time.perf_counter()
        try:
            jobs = self.preprocess(data)
            t1 = time.perf_counter()
            jobs = self.inference(jobs)
        except Exception:  # noqa: BLE001 - a bug must not take the client requests down with it
            n = len(data) if isinstance(data, list) else 0
            logger.exception("HINT handler: unexpected error for a batch of %d", n)
            n = max(n, 1) if envelope else n
            jobs = [Job(error=RequestError(500, "internal error (see the server log)")) for _ in range(n)]
            t1 = t0
        t2 = time.perf_counter()
        out = self.postprocess(jobs)
        release_memory()
        ms = 1e3 * (time.perf_counter() - t0)
        if self.cfg["log_timings"]:
            logger.info(
                "timings ms: batch %d, preprocess %.1f, inference %.1f, postprocess %.1f",
                len(jobs),
                1e3 * (t1 - t0),
                1e3 * (t2 - t1),
                ms - 1e3 * (t2 - t0),
            )
        try:
            context.metrics.add_time("HandlerTime", round(ms, 2), None, "ms")
        except Exception:  # noqa: BLE001 - metrics are best effort (and absent in tests)
            pass
        return out

    def preprocess(self, data) -> list[Job]:
        """Parse and decode every request on its own: a failure is that request's answer."""
        if self.envelope:
            return self._envelope_jobs(data)
        jobs = []
        for idx, row in enumerate(data or []):
            try:
                jobs.append(Job(request=parse_request(row, self.limits, self._headers(idx))))
            except RequestError as e:
                jobs.append(Job(error=e))
            except Exception:  # noqa: BLE001 - parse_request raises only RequestError: a bug, per request
                logger.exception("HINT handler: reading one request failed")
                jobs.append(Job(error=RequestError(500, "internal error while reading the request")))
        return jobs

    def _envelope_jobs(self, items) -> list[Job]:
        """One job per instance (v1) or input (v2) of the one request an envelope hands over."""
        if self.envelope not in ENVELOPES:
            logger.error(
                "HINT handler: service_envelope %r is not supported (kserve, kservev2 or none)", self.envelope
            )
            error = RequestError(
                500,
                f"this server's service_envelope {self.envelope!r} is not supported by HINT "
                "(kserve, kservev2, or none)",
            )
            return [Job(error=error) for _ in (items if isinstance(items, list) and items else [None])]
        parsed = parse_envelope(items, self.limits, self.envelope)
        if isinstance(parsed, RequestError):
            return [Job(error=parsed)]
        return [Job(error=p) if isinstance(p, RequestError) else Job(request=p) for p in parsed]

    def inference(self, jobs: list[Job]) -> list[Job]:
        """One forward pass for the valid images (per ``max_batch``); if it fails, each image alone."""
        todo, step = [j for j in jobs if j.error is None], int(self.cfg["max_batch"])
        groups = [todo[k : k + step] for k in range(0, len(todo), step)]
        while groups:
            group = groups.pop(0)
            try:
                self._answer(group)
            except Exception:  # noqa: BLE001 - a failing batch is answered one by one: only a bad one fails
                logger.exception("HINT handler: answering %d request(s) failed", len(group))
                if len(group) > 1:
                    groups.extend([j] for j in group)
                else:
                    group[0].error = RequestError(500, "internal error while explaining (see the server log)")
        return jobs

    @torch.no_grad()
    def _answer(self, jobs: list[Job]) -> None:
        ex = self.explainer
        for job in jobs:
            if isinstance(job.request, NeuronRequest):
                job.result = ex.neuron(job.request.neuron)
        images = [j for j in jobs if isinstance(j.request, ExplainRequest)]
        if images:
            answers = ex.answer(
                [j.request.image for j in images],
                [j.request.size for j in images],
                [j.request.options for j in images],
            )
            for job, answer in zip(images, answers, strict=True):
                job.result = answer

    def postprocess(self, jobs: list[Job]) -> list:
        """Compact JSON per request; an error sets its status and reason phrase.

        Under an envelope the jobs are the items of one request, answered in order for the envelope to
        wrap: v1 the documents as objects (``{"predictions": [...]}``), v2 as JSON text (each output's one
        BYTES element); the request's status is its first failing item's (200 when none fails)."""
        out = []
        for i, job in enumerate(jobs):
            try:
                body = None if job.error else json.dumps(job.result, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError):
                logger.exception("HINT handler: an answer is not valid JSON")
                job.error = RequestError(500, "internal error while writing the answer (see the server log)")
            if self.envelope == "kserve":
                out.append(job.error.body() if job.error else job.result)
            else:
                out.append(json.dumps(job.error.body()) if job.error else body)
            if not self.envelope:
                self._reply(i, job.error)
        if self.envelope:
            self._reply(0, next((j.error for j in jobs if j.error), None))
        return out

    def _headers(self, idx: int) -> dict:
        try:
            return dict(self.context.get_all_request_header(idx) or {})
        except Exception:  # noqa: BLE001 - no headers (tests, another TorchServe version)
            return {}

    def _reply(self, idx: int, error: RequestError | None = None) -> None:
        try:
            if error is not None:
                self.context.set_response_status(error.code, error.reason, idx=idx)
            self.context.set_response_content_type(idx, "application/json")
        except Exception:  # noqa: BLE001 - a context without these (tests): the body still says it
            pass


def envelope_of(caller) -> str | None:
    """The service envelope whose ``handle`` is the frame ``caller`` (``kserve``, ``kservev2`` ...), or None.

    TorchServe 0.12 (``ts/model_loader.py``) wraps a handler's entry point in the envelope named by
    config.properties ``service_envelope``: ``BaseEnvelope.handle`` (``ts/torch_handler/request_envelope/
    base.py``) calls it with what ``parse_input`` made of the batch, and nothing marks that on the
    context. The envelope's module name is the ``service_envelope`` value."""
    try:
        from ts.torch_handler.request_envelope.base import BaseEnvelope
    except ImportError:  # pragma: no cover - TorchServe is installed wherever the handler runs
        return None
    owner = caller.f_locals.get("self") if caller is not None and caller.f_code.co_name == "handle" else None
    return type(owner).__module__.rsplit(".", 1)[-1] if isinstance(owner, BaseEnvelope) else None


_service: HintHandler | None = None


def handle(data, context):
    """TorchServe's entry point: the handler is created on the first call (``handle(None, context)``
    when the worker loads the model). Under an envelope ``data`` is what it parsed (v1: ``None`` for a
    request without ``instances``, which gets its 400)."""
    global _service
    if _service is None:
        _service = HintHandler()
        _service.initialize(context)
    envelope = envelope_of(sys._getframe(1))
    if data is None and envelope is None:
        return None
    return _service.handle(data, context, envelope)
