"""TorchServe handler for HINT: prediction, WordNet chain, concept scores, boxes and Shapley neurons.

One request is one of (see ``docs/api.md``; response schema in ``docs/response.schema.json``):

* raw image bytes (JPEG, PNG, WebP, BMP, GIF first frame, TIFF; any mode; EXIF rotation applied),
  default options (TorchServe 0.12 does not pass the query string to handlers);
* multipart form data: the image in a file part (``data``, ``file``, ``image`` or any other name),
  options as text fields (``top_k=3``, ``concepts=dog,mammal``);
* JSON ``{"image": "<base64>", "concepts": [...], "top_k": 5, "threshold": 0.5,
  "return_maps": false, "ablate": [..]}``;
* JSON ``{"neuron": 445}``: the reverse direction (that neuron's Shapley value for every concept).

Every request of a batch gets exactly one answer: the explanation JSON, or a JSON error
``{"code", "type", "message"}`` with a 4xx status set through ``context.set_response_status(code,
message, idx=i)``, so one bad request never fails the others. Valid images of a batch share one
forward pass. A missing, corrupt or mismatched concept bank fails the worker start with one line.

The archive (``make archive``) carries this file, the bank files (``manifest.json``,
``bank.safetensors``) and a copy of the ``hint`` package; ``model-config.yaml`` sets batching and the
``handler:`` options below.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)

#: image formats accepted (PIL names; MPO is the multi-picture JPEG many phones write)
FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF")
#: names TorchServe gives the image: the raw body, or common multipart part names
IMAGE_PARTS = ("body", "data", "file", "image")
#: handler options (``handler:`` in model-config.yaml) and their defaults
DEFAULTS = {
    "bank": ".",  # the bank folder, relative to the model dir (the archive's extra files)
    "max_pixels": 40_000_000,  # width x height above this -> 413 (decompression bombs)
    "max_bytes": 20_000_000,  # encoded image bytes above this -> 413
    "max_batch": 64,  # safety cap on images in one forward pass
    "torch_threads": 0,  # 0: leave torch's default
    "fast": True,  # boxes on the model's input grid, activations by one matmul (hint.explain.Explainer)
    "box_grid": 0,  # fast boxes: grid side in pixels, 0 = the backbone's input size (224)
    "default_top_k": 5,
    "default_threshold": 0.5,
    "log_timings": False,  # log preprocess / forward / postprocess milliseconds of every batch
}
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


class RequestError(Exception):
    """A client error: HTTP ``code`` (4xx) and a one-line message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = _one_line(message)


@dataclass
class Job:
    """One request of the batch, parsed (``image`` or ``neuron``) or failed (``error``)."""

    image: Image.Image | None = None
    neuron: int | None = None
    options: dict = field(default_factory=dict)
    error: RequestError | None = None
    result: dict | None = None


class HintHandler(BaseHandler):
    """Backbone + concept bank from the model dir; explain images, or answer the reverse direction."""

    #: options a request may set (JSON keys or multipart text fields)
    OPTIONS = ("image", "concepts", "top_k", "threshold", "return_maps", "ablate", "neuron")
    #: handler options model-config.yaml may set under ``handler:``
    DEFAULTS = DEFAULTS

    def __init__(self):
        super().__init__()
        self.cfg = dict(self.DEFAULTS)
        self.explainer = None
        self.hierarchy = None
        self.channels = 0
        self.formats = FORMATS
        self._forward_s = 0.0

    # ------------------------------------------------------------------------------------------ start

    def initialize(self, context):
        """Load the bank (sha256 verified) and its backbone; any problem fails the start with one line."""
        self.context = context
        self.manifest = getattr(context, "manifest", None)
        gpu = context.system_properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else "cpu")
        try:
            self._configure(context)
            self._load(Path(context.system_properties["model_dir"]))
        except Exception as e:  # noqa: BLE001 - every start problem becomes one readable line
            message = f"HINT handler cannot start: {_one_line(str(e) or type(e).__name__)}"
            logger.error(message)
            raise RuntimeError(message) from None
        self.initialized = True

    def _configure(self, context) -> None:
        yaml_cfg = getattr(context, "model_yaml_config", None) or {}
        handler_cfg = yaml_cfg.get("handler") or {}
        if not isinstance(handler_cfg, dict):
            raise ValueError("model-config.yaml 'handler' must be a mapping")
        unknown = sorted(set(handler_cfg) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(f"unknown handler option(s) {unknown} in model-config.yaml; known: {sorted(self.DEFAULTS)}")
        self.cfg.update(handler_cfg)
        threads = int(self.cfg["torch_threads"])
        if threads > 0:
            torch.set_num_threads(threads)
            try:
                import cv2

                cv2.setNumThreads(threads)
            except ImportError:  # pragma: no cover - cv2 is a dependency of hint
                pass
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated image is an error, never half an image
        Image.init()  # register every plugin now (MPO, WebP ...) so Image.open(formats=...) knows them
        self.formats = tuple(f for f in FORMATS if f in Image.OPEN)

    def _load(self, model_dir: Path) -> None:
        from hint.backbones import get_backbone
        from hint.bank import ConceptBank
        from hint.explain import Explainer
        from hint.hierarchy import Hierarchy

        folder = (model_dir / str(self.cfg["bank"])).resolve()
        bank = ConceptBank.load(folder)  # verifies every sha256; BankError with one line otherwise
        name, layer = bank.meta.get("backbone"), bank.meta.get("layer")
        if not name or not layer:
            raise ValueError(f"{folder}/manifest.json names no backbone/layer")
        backbone = get_backbone(name, layer)
        want, have = bank.meta.get("weights_sha256"), backbone.weights_sha256
        if want and have and want != have:
            raise ValueError(f"bank built with weights sha256 {want[:12]}, backbone has {have[:12]}")
        self.hierarchy = Hierarchy.load()
        self.explainer = Explainer(
            backbone, bank, self.hierarchy, device=self.device, fast=bool(self.cfg["fast"]),
            box_grid=int(self.cfg["box_grid"]) or None,
        )  # fmt: skip
        probs, maps, z = self.explainer.forward([Image.new("RGB", (backbone.input_size,) * 2)])  # warm-up
        bank.check_backbone(backbone.name, backbone.layer, int(z.shape[1]))
        self.channels = int(z.shape[1])
        logger.info(
            "HINT handler ready: %s:%s, bank %s (%d concepts), torch threads %d",
            name, layer, bank.id, len(bank.concepts), torch.get_num_threads(),
        )  # fmt: skip

    # ------------------------------------------------------------------------------------ per batch

    def handle(self, data, context):
        """preprocess -> inference -> postprocess; one answer per request, whatever happens."""
        start = time.time()
        self.context = context
        try:
            t0 = time.perf_counter()
            jobs = self.preprocess(data)
            t1 = time.perf_counter()
            jobs = self.inference(jobs)
            t2 = time.perf_counter()
            out = self.postprocess(jobs)
            if self.cfg["log_timings"]:
                t3 = time.perf_counter()
                logger.info(
                    "timings ms: batch %d, preprocess %.1f, inference %.1f (forward %.1f), postprocess %.1f",
                    len(jobs), 1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * self._forward_s, 1e3 * (t3 - t2),
                )  # fmt: skip
        except Exception:  # noqa: BLE001 - a bug must not take the client requests down with it
            logger.exception("HINT handler: unexpected error for a batch of %d", len(data or []))
            err = RequestError(500, "internal error while explaining (see the server log)")
            out = self.postprocess([Job(error=err) for _ in data or []])
        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            try:
                metrics.add_time("HandlerTime", round((time.time() - start) * 1000, 2), None, "ms")
            except Exception:  # noqa: BLE001 - metrics are best effort
                pass
        return out

    def preprocess(self, data) -> list[Job]:
        """Parse and decode every request; failures become per-request errors."""
        jobs = []
        for row in data or []:
            try:
                job = self._parse(row)
            except RequestError as e:
                job = Job(error=e)
            except MemoryError:
                job = Job(error=RequestError(413, "request too large to decode"))
            jobs.append(job)
        return jobs

    def inference(self, jobs: list[Job]) -> list[Job]:
        """One forward pass for all valid images of the batch; neuron lookups need none."""
        for job in jobs:
            if job.error is None and job.neuron is not None:
                job.result = self.explainer.neuron(job.neuron)
        todo = [j for j in jobs if j.error is None and j.image is not None]
        for k in range(0, len(todo), int(self.cfg["max_batch"])):
            self._explain(todo[k : k + int(self.cfg["max_batch"])])
        return jobs

    @torch.inference_mode()
    def _explain(self, todo: list[Job]) -> None:
        if not todo:
            return
        ex = self.explainer
        t = time.perf_counter()
        probs, maps, z = ex.forward([j.image for j in todo])
        self._forward_s = time.perf_counter() - t
        for i, job in enumerate(todo):
            o = job.options
            try:
                m_i, z_i = maps[i], z[i]
                if o["ablate"]:
                    m, zz = ex.concept_maps(z[i : i + 1], o["ablate"])
                    m_i, z_i = m[0], zz[0]
                job.result = ex.describe(
                    job.image.size, probs[i], m_i, z_i, o["rows"], o["top_k"], o["threshold"],
                    o["return_maps"], o["ablate"],
                )  # fmt: skip
            except Exception:  # noqa: BLE001 - one image's bug answers 500 for that image only
                logger.exception("HINT handler: explaining one image failed")
                job.error = RequestError(500, "internal error while explaining this image (see the server log)")

    def postprocess(self, jobs: list[Job]) -> list[str]:
        """Compact JSON per request; errors get their status and a JSON body."""
        out = []
        for i, job in enumerate(jobs):
            if job.error is not None:
                e = job.error
                self._status(i, e.code, e.message)
                body = {"code": e.code, "type": _ERROR_TYPES.get(e.code, "Error"), "message": e.message}
            else:
                body = job.result
            self._content_type(i)
            out.append(json.dumps(body, separators=(",", ":"), allow_nan=False))
        return out

    def _status(self, idx: int, code: int, message: str) -> None:
        ctx = self.context
        if ctx is not None and hasattr(ctx, "set_response_status"):
            try:
                ctx.set_response_status(code, _ascii(message), idx=idx)
            except (IndexError, TypeError, AttributeError):
                ctx.set_response_status(code, _ascii(message))

    def _content_type(self, idx: int) -> None:
        ctx = self.context
        if ctx is not None and hasattr(ctx, "set_response_content_type"):
            try:
                ctx.set_response_content_type(idx, "application/json")
            except (IndexError, TypeError, AttributeError, KeyError):
                pass

    # ------------------------------------------------------------------------------------ parsing

    def _parse(self, row) -> Job:
        if not isinstance(row, dict) or not row:
            raise RequestError(400, "empty request: send an image (raw bytes, multipart or JSON base64)")
        payloads = {k: v for k, v in row.items() if k in IMAGE_PARTS or k not in self.OPTIONS}
        text_opts = {k: v for k, v in row.items() if k not in payloads}
        if len(payloads) > 1:
            names = ", ".join(repr(k) for k in payloads)
            raise RequestError(
                400, f"expected one image part, got {names}; options are {', '.join(self.OPTIONS[1:])}"
            )
        opts: dict = {}
        for k, v in text_opts.items():
            opts[k] = self._from_text(k, _text(v, k))
        if not payloads:
            if "neuron" in opts:  # a form with just the neuron field
                return self._job(opts, None)
            raise RequestError(400, "no image in the request (empty body?)")
        ((part, value),) = payloads.items()
        image_bytes = None
        if isinstance(value, dict):
            image_bytes = self._json_options(value, opts)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            if isinstance(value, memoryview):
                value = value.tobytes()
            first = _first(value)  # (a bytearray from TorchServe is used as it is: no copy)
            if not first:
                raise RequestError(400, "empty body: send image bytes, multipart form data or JSON")
            if first in (b"{", b"["):
                try:
                    doc = json.loads(value.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise RequestError(400, f"bad JSON: {e}") from None
                image_bytes = self._json_options(doc, opts)
            else:
                image_bytes = value
        elif isinstance(value, str):
            first = _first(value)
            if not first:
                raise RequestError(400, "empty body: send image bytes, multipart form data or JSON")
            if first in ("{", "["):
                try:
                    doc = json.loads(value)
                except json.JSONDecodeError as e:
                    raise RequestError(400, f"bad JSON: {e}") from None
                image_bytes = self._json_options(doc, opts)
            else:
                raise RequestError(
                    400,
                    f"part {part!r} is text, not an image: send the image bytes with an image/* or "
                    "application/octet-stream Content-Type, as a multipart file, or JSON {\"image\": base64}",
                )
        else:
            image_bytes = self._json_options(value, opts)
        return self._job(opts, image_bytes)

    def _json_options(self, doc, opts: dict) -> bytes | None:
        """Merge a JSON document's options into ``opts``; the decoded image bytes (None for a neuron)."""
        if not isinstance(doc, dict):
            raise RequestError(400, f"JSON body must be an object, not {_kind(doc)}")
        for k, v in doc.items():
            if k in opts:
                raise RequestError(400, f"option {k!r} given twice (JSON and form field)")
            opts[k] = v
        if "image" in opts:
            return self._base64(opts.pop("image"))
        if "neuron" not in opts:
            raise RequestError(400, "JSON request needs \"image\" (base64) or \"neuron\" (int)")
        return None

    def _job(self, opts: dict, image_bytes: bytes | None) -> Job:
        unknown = [k for k in opts if k not in self.OPTIONS]
        if unknown:
            raise RequestError(400, f"unknown option {unknown[0]!r}; known: {', '.join(self.OPTIONS)}")
        if image_bytes is None:
            if "neuron" not in opts:
                raise RequestError(400, "no image in the request")
            others = [k for k in opts if k != "neuron"]
            if others:
                raise RequestError(400, f"\"neuron\" takes no other option (got {', '.join(others)})")
            return Job(neuron=self._int(opts["neuron"], "neuron", 0, self.channels - 1))
        if "neuron" in opts:
            raise RequestError(400, "\"neuron\" cannot be combined with an image")
        options = self._options(opts)
        return Job(image=self._decode(image_bytes), options=options)

    def _options(self, opts: dict) -> dict:
        top_k = self._int(opts.get("top_k", self.cfg["default_top_k"]), "top_k", 0, self.channels)
        threshold = opts.get("threshold", self.cfg["default_threshold"])
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise RequestError(400, f"threshold must be a number in [0, 1], not {_kind(threshold)}")
        if not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
            raise RequestError(400, f"threshold must be in [0, 1], got {threshold}")
        return_maps = opts.get("return_maps", False)
        if not isinstance(return_maps, bool):
            raise RequestError(400, f"return_maps must be true or false, not {_kind(return_maps)}")
        ablate = opts.get("ablate", [])
        if not isinstance(ablate, list):
            raise RequestError(400, f"ablate must be a list of neuron indices, not {_kind(ablate)}")
        if len(ablate) > self.channels:
            raise RequestError(400, f"ablate lists {len(ablate)} neurons; the layer has {self.channels}")
        ablate = [self._int(n, "ablate", 0, self.channels - 1) for n in ablate]
        return {
            "rows": self._concepts(opts.get("concepts")),
            "top_k": top_k,
            "threshold": float(threshold),
            "return_maps": return_maps,
            "ablate": ablate,
        }

    def _concepts(self, concepts) -> list[int]:
        if concepts is None:
            return self.explainer.rows(None)
        if not isinstance(concepts, list):
            raise RequestError(400, f"concepts must be a list of names or WNIDs, not {_kind(concepts)}")
        if not concepts:
            raise RequestError(400, "concepts is empty: leave it out for every concept of the bank")
        if len(concepts) > 10 * len(self.explainer.bank.concepts) + 10:
            raise RequestError(400, f"too many concepts ({len(concepts)})")
        wnids = []
        bank = set(self.explainer.bank.wnids)
        for c in concepts:
            if not isinstance(c, str) or not c.strip() or len(c) > 200:
                raise RequestError(400, f"concepts must be non-empty strings (names or WNIDs), got {_kind(c)}")
            try:
                w = self.hierarchy.find(c).wnid
            except KeyError:
                raise RequestError(400, f"unknown concept {c.strip()[:80]!r}: no ImageNet class or ancestor") from None
            if w not in bank:
                names = ", ".join(x["name"] for x in self.explainer.bank.concepts)
                raise RequestError(400, f"concept {c.strip()!r} ({w}) is not in this bank; it has: {names}")
            wnids.append(w)
        return self.explainer.rows(list(dict.fromkeys(wnids)))

    @staticmethod
    def _from_text(name: str, text):
        """A multipart text field -> the JSON type of its option (``concepts`` and ``ablate`` comma
        separated, ``return_maps`` true/false); a field that is not text (a JSON part) stays as is."""
        if not isinstance(text, str) or name not in ("concepts", "top_k", "threshold", "return_maps", "ablate", "neuron"):
            return text
        t = text.strip()
        if name == "concepts":
            return [c.strip() for c in t.split(",") if c.strip()]
        if name == "return_maps":
            if t.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise RequestError(400, f"return_maps must be true or false, got {t[:40]!r}")
            return t.lower() in ("true", "1", "yes")
        if name == "threshold":
            return _number(t, name)
        items = [p for p in re.split(r"[,\s]+", t) if p] if name == "ablate" else [t]
        for p in items:
            if not re.fullmatch(r"[+-]?\d{1,9}", p):
                raise RequestError(400, f"{name} must be an integer, got {p[:40]!r}")
        return [int(p) for p in items] if name == "ablate" else int(t)

    @staticmethod
    def _int(v, name: str, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise RequestError(400, f"{name} must be an integer in {lo}..{hi}, not {_kind(v)}")
        if not lo <= v <= hi:
            raise RequestError(400, f"{name} {v} out of range {lo}..{hi}")
        return v

    def _base64(self, s) -> bytes:
        if not isinstance(s, str):
            raise RequestError(400, f"image must be a base64 string, not {_kind(s)}")
        s = _DATA_URL.sub("", s.strip(), count=1)
        s = "".join(s.split())
        if not s:
            raise RequestError(400, "image is empty")
        if len(s) > self.cfg["max_bytes"] * 4 // 3 + 8:
            raise RequestError(413, f"image is over {self.cfg['max_bytes']} bytes")
        s += "=" * (-len(s) % 4)
        try:
            if "-" in s or "_" in s:
                return base64.b64decode(s, altchars=b"-_", validate=True)
            return base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError) as e:
            raise RequestError(400, f"image is not valid base64 ({e})") from None

    def _decode(self, raw: bytes) -> Image.Image:
        """Bytes -> RGB image, as displayed (EXIF orientation applied); 4xx for anything off."""
        from hint.backbones import to_rgb

        if not raw:
            raise RequestError(400, "image is empty")
        if len(raw) > self.cfg["max_bytes"]:
            raise RequestError(413, f"image is {len(raw)} bytes, over the {self.cfg['max_bytes']} byte limit")
        fmt = _sniff(raw) or "image"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(raw), formats=self.formats)
                fmt = im.format or fmt
                w, h = im.size
                if w < 1 or h < 1:
                    raise RequestError(400, f"{fmt} has zero size ({w}x{h})")
                if w * h > self.cfg["max_pixels"]:
                    raise RequestError(
                        413, f"{fmt} is {w}x{h} = {w * h} pixels, over the {self.cfg['max_pixels']} pixel limit"
                    )
                im.seek(0)  # animated GIF/WebP/PNG, multi-page TIFF: the first frame
                im.load()
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception:  # noqa: BLE001 - a broken EXIF block: keep the pixels as stored
                    pass
                rgb = to_rgb(im)
                rgb.load()
                return rgb
        except RequestError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise RequestError(413, f"{fmt} too large: over the {self.cfg['max_pixels']} pixel limit ({e})") from None
        except UnidentifiedImageError:
            if fmt != "image":
                raise RequestError(400, f"broken {fmt} file: its header cannot be read") from None
            raise RequestError(
                400, f"not a supported image (JPEG, PNG, WebP, BMP, GIF, TIFF); first bytes {bytes(raw[:16])!r}"
            ) from None
        except MemoryError:
            raise RequestError(413, f"{fmt} too large to decode") from None
        except Exception as e:  # noqa: BLE001 - any decoder error on client bytes is a client error
            raise RequestError(400, f"cannot decode {fmt}: {_one_line(str(e)) or type(e).__name__}") from None


_ERROR_TYPES = {400: "BadRequest", 413: "PayloadTooLarge", 500: "InternalServerError"}


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ascii(text: str) -> str:
    """A reason phrase for the HTTP status line: printable ASCII, one line."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in _one_line(text, 200))


def _kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"number {v!r}"
    if isinstance(v, str):
        return f"string {v[:40]!r}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)  # fmt: skip


def _sniff(raw: bytes) -> str | None:
    """The format an image file claims by its first bytes (for error messages)."""
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC if raw.startswith(magic)), None)


def _first(value: bytes | bytearray | str) -> bytes | bytearray | str:
    """The first non-blank character of a body (without copying it)."""
    blank = r"\s*" if isinstance(value, str) else rb"\s*"
    i = re.match(blank, value).end()
    return value[i : i + 1]


def _number(s: str, name: str) -> float:
    try:
        return float(s.strip())
    except ValueError:
        raise RequestError(400, f"{name} must be a number, got {s[:40]!r}") from None


def _text(v, name: str) -> str:
    """A query parameter or form field as text."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, f"option {name!r} is not UTF-8 text") from None
    if isinstance(v, str):
        return v
    return v  # already decoded JSON (a part sent as application/json)


def lazy_handle(cls, service, data, context):
    """TorchServe's entry-point idiom for a handler class: create and initialise the instance on the
    first call (TorchServe calls ``handle(None, context)`` when the worker loads the model), then handle.
    Returns (the instance, the output)."""
    if service is None:
        service = cls()
        service.initialize(context)
    return service, (None if data is None else service.handle(data, context))


_service: HintHandler | None = None


def handle(data, context):
    """TorchServe's entry point (see :func:`lazy_handle`)."""
    global _service
    _service, out = lazy_handle(HintHandler, _service, data, context)
    return out
