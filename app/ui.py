"""The Gradio Blocks page: upload → explain through the endpoint → prediction and its concept chain,
concept picker (every built concept, searchable, with its path in the bank's hierarchy: WordNet by
default, or the bank's own, docs/custom.md — names and paths come from the service), overlays with boxes, this
image's neurons beside the bank's global ones, live ablation through the network, neuron look-up with the
neuron's label and exemplars (its top image patches), also opened from a list of the charts' neurons.

Everything model-side comes from :class:`app.client.HintClient`; this module only draws and lays out.
The pure helpers (labels, markdown, frames, overlays) are importable without starting a server.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import re
import tempfile
import time
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from hint.serve.options import OPTIONS

from .client import HintClient, HintError
from .drawing import fit, image_neuron_bars, neuron_bars, overlay

log = logging.getLogger("app")

MAX_UPLOAD_MB = 10
# the service's default pixel limits (handlers/model-config.yaml): width x height of any image, and of
# images decoded at full size (every format but JPEG)
MAX_PIXELS = 40_000_000
MAX_DECODED_PIXELS = 16_000_000
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF")
MAX_UPLOAD = f"{MAX_UPLOAD_MB}mb"
# TorchServe's default max_request_size is 6,553,500 bytes and base64 adds a third: files above this
# are re-encoded as JPEG at the same size in pixels (boxes stay in the original image's pixels).
SEND_AS_IS_BYTES = 4_000_000
MAX_NEURONS = 20  # neurons asked per concept; the ablation slider's range
SEP = " › "
IMAGE_SOURCE = "this image's neurons (signed Shapley value)"
GLOBAL_SOURCE = "the bank's neurons (global Shapley value)"
UNRELIABLE = " (unreliable)"
EXAMPLES = {  # skimage.data photo -> file name
    "chelsea": "chelsea.jpg",
    "coffee": "coffee.jpg",
    "astronaut": "astronaut.jpg",
    "rocket": "rocket.jpg",
}
LEGEND = (
    "Heat: the concept's localisation map, the probability of its classifiers at each place (fused over the "
    "layers of the bank's localisation head), 0 (blue) → 1 (red). Magenta box: the largest "
    "region where the map (upsampled, min-max normalised) reaches the service's box threshold, drawn only when "
    "the concept is present. *probe*: the probe's image score (✓ when it reaches its calibrated threshold); "
    "*model*: the model's summed softmax over the concept's classes; *present*: the service's answer (the "
    "model's probability and the probe's score together, docs/concepts.md); *unreliable*: the probe does not "
    "beat chance on held-out images, so its map and box are not to be trusted."
)


# ----------------------------------------------------------------------------------------------
# pure helpers


def example_images(folder: str | Path | None = None) -> list[str]:
    """The skimage.data photos written once as JPEG files (default: a folder in the temp dir)."""
    from skimage import data

    folder = Path(folder or Path(tempfile.gettempdir()) / "hint-app-examples")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, file in EXAMPLES.items():
        p = folder / file
        if not p.is_file():
            tmp = p.with_suffix(".tmp")
            Image.fromarray(getattr(data, name)()).convert("RGB").save(tmp, format="JPEG", quality=92)
            os.replace(tmp, p)
        out.append(str(p))
    return out


def check_upload(path: str | Path) -> None:
    """A readable :class:`HintError` for an upload the service would refuse: not a file, too many bytes,
    not an image it reads, too many pixels (read from the header only, the service's default limits)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError:
        raise HintError("the uploaded file is gone; upload it again") from None
    if size > MAX_UPLOAD_MB * 1024 * 1024:
        raise HintError(f"the image is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB} MB")
    Image.init()  # every plugin registered (MPO, WebP ...) before naming formats
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p, formats=[f for f in IMAGE_FORMATS if f in Image.OPEN]) as im:
                fmt, (w, h) = im.format, im.size
    except Image.DecompressionBombError as e:
        m = re.search(r"\((\d+) pixels", str(e))
        pixels = f"{int(m.group(1)) / 1e6:.0f} megapixels" if m else "too many pixels"
        raise HintError(
            f"the image has {pixels}; the service accepts up to {MAX_PIXELS // 10**6} megapixels"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise HintError(
            f"{p.name} is not an image the service reads (JPEG, PNG, WebP, BMP, GIF or TIFF)"
        ) from None
    limit = MAX_PIXELS if fmt in ("JPEG", "MPO") else MAX_DECODED_PIXELS
    if w * h > limit:
        raise HintError(
            f"the image is {w}×{h} = {w * h / 1e6:.1f} megapixels; the service accepts up to "
            f"{limit // 10**6} megapixels for {fmt} (JPEG: {MAX_PIXELS // 10**6})"
        )


def upload_bytes(path: str | Path, limit: int = SEND_AS_IS_BYTES) -> bytes:
    """The file's bytes, or when larger than ``limit`` the same pixels re-encoded as JPEG; a readable
    HintError for a file the service would refuse (:func:`check_upload`)."""
    p = Path(path)
    check_upload(p)
    size = p.stat().st_size
    raw = p.read_bytes()
    if size <= limit:
        return raw
    try:
        with Image.open(io.BytesIO(raw)) as im:
            rgb = im.convert("RGB")
    except Exception as e:  # noqa: BLE001 - any decoder error becomes one readable line
        raise HintError(f"cannot read the image: {e}") from None
    for quality in (90, 75, 60):
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=quality)
        if buf.tell() <= limit:
            break
    return buf.getvalue()


@lru_cache(maxsize=8)
def display_image(path: str, width: int, height: int) -> np.ndarray:
    """The uploaded image as the server saw it ((width, height) from its answer), fit for display."""
    with Image.open(path) as im:
        im = im.convert("RGB") if im.size == (width, height) else ImageOps.exif_transpose(im).convert("RGB")
    if im.size != (width, height):
        im = im.resize((width, height))
    a = fit(im)
    a.setflags(write=False)
    return a


def concept_path(c: dict) -> list[str]:
    """The concept's path in the bank's hierarchy, most general first, without the root every path
    ends in (``entity`` in WordNet)."""
    path = list(reversed(c.get("path") or [c["name"]]))
    return path[1:] if len(path) > 1 else path


def concept_labels(concepts: list[dict]) -> dict[str, str]:
    """wnid -> 'feline · physical entity › … › mammal › placental › carnivore': the name first (what one
    types to search), then its hierarchy path; a name two concepts share gets its id."""
    names = [c["name"] for c in concepts]
    out = {}
    for c in concepts:
        above = concept_path(c)[:-1]
        name = c["name"] if names.count(c["name"]) == 1 else f"{c['name']} ({c['wnid']})"
        out[c["wnid"]] = name + (f"  ·  {SEP.join(above)}" if above else "")
    return out


def concept_choices(concepts: list[dict], with_scores: bool = True) -> list[tuple[str, str]]:
    """(label, wnid) for every concept in the hierarchy's depth-first order (siblings alphabetical);
    unreliable ones tagged; with scores, the probe's image score and the model's probability."""
    labels = concept_labels(concepts)
    out = []
    for c in sorted(concepts, key=lambda c: (concept_path(c), c["wnid"])):
        label = labels[c["wnid"]]
        if with_scores and c.get("score") is not None:
            state = "present" if c.get("present") else "absent"
            model = f", model {c['model_probability']:.2f}" if c.get("model_probability") is not None else ""
            label += f"  (probe {c['score']:.2f}{model}, {state})"
        if c.get("reliable") is False:
            label += UNRELIABLE
        out.append((label, c["wnid"]))
    return out


def default_selection(result: dict, n: int = 4) -> list[str]:
    """Up to n concepts: the bank's concepts on the predicted chain, general to specific, spread out;
    where the chain has none, the root and the highest-scoring concepts."""
    bank = [c["wnid"] for c in result["concepts"]]
    on_chain = [lvl["wnid"] for lvl in reversed(result.get("chain", [])) if lvl["wnid"] in bank]
    if len(on_chain) > n:
        idx = sorted({int(round(i)) for i in np.linspace(0, len(on_chain) - 1, n)})
        on_chain = [on_chain[i] for i in idx]
    if on_chain:
        return on_chain
    by_depth = sorted(result["concepts"], key=lambda c: (c.get("depth", 0), c["wnid"]))
    root = by_depth[0]["wnid"] if by_depth else None
    rest = sorted((c for c in result["concepts"] if c["wnid"] != root), key=lambda c: -c.get("score", 0))
    return ([root] if root else []) + [c["wnid"] for c in rest[: n - 1]]


def _pct(p: float) -> str:
    return f"{100 * p:.1f} %"


def prediction_markdown(result: dict) -> str:
    """The top-5 prediction and the hierarchy chain with each level's probability and concept score."""
    preds = result.get("prediction") or []
    if not preds:
        return "_no prediction_"
    top = preds[0]
    lines = [f"### {top['name']} — {_pct(top['probability'])}"]
    if len(preds) > 1:
        lines.append("Next: " + " · ".join(f"{p['name']} {_pct(p['probability'])}" for p in preds[1:]))
    chain = result.get("chain") or []
    if chain:
        parts = []
        for lvl in chain:
            if lvl.get("score") is not None:
                parts.append(f"**{lvl['name']}** {lvl['score']:.2f}")
            else:
                parts.append(lvl["name"])
        lines.append("")
        lines.append("**Hierarchy chain** (bold: bank concepts with their probe score)  ")
        lines.append(SEP.join(parts))
        rows = "".join(
            f"<tr><td>{lvl['name']}</td><td>{_pct(lvl.get('probability', 0.0))}</td>"
            f"<td>{'–' if lvl.get('score') is None else format(lvl['score'], '.3f')}</td></tr>"
            for lvl in chain
        )
        lines.append("")
        lines.append(
            "<details><summary>each level's model probability (sum over its classes) and probe score</summary>"
            f"<table><thead><tr><th>level</th><th>model P(level)</th><th>probe score</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></details>"
        )
    return "\n".join(lines)


def concept_caption(c: dict) -> str:
    """One line per overlay: probe score (✓ at or above its threshold) beside the model's probability,
    the served answer, the box."""
    box = c.get("box")
    where = (
        f"box {box[0]},{box[1]}–{box[2]},{box[3]}, {_pct(c.get('area_fraction', 0))} of the image"
        if box
        else "no box (not present)"
    )
    probe = f"probe {c['score']:.3f}"
    if c.get("threshold") is not None:
        probe += f" {'✓' if c.get('probe_present') else '✗'} (threshold {c['threshold']:.2f})"
    model = f" · model {c['model_probability']:.3f}" if c.get("model_probability") is not None else ""
    state = ("present" if c.get("present") else "absent") + (
        ", unreliable" if c.get("reliable") is False else ""
    )
    return f"{c['name']} · {probe}{model} · {state} · {where}"


def concept_overlay(image: np.ndarray, c: dict, size: tuple[int, int]) -> np.ndarray:
    m = np.asarray(c["map"], dtype=np.float32) if c.get("map") is not None else None
    return overlay(image, m, c.get("box"), f"{c['name']} {c['score']:.2f}", original_size=size)


CONCEPT_COLUMNS = ["concept", "probe score", "probe threshold", "probe present", "model probability", "present",
                   "reliable", "region %", "hierarchy path"]  # fmt: skip


def concepts_frame(concepts: list[dict], wnids: list[str]) -> pd.DataFrame:
    """The chosen concepts side by side: the probe's score and verdict beside the model's probability
    and the served answer."""
    by = {c["wnid"]: c for c in concepts}
    rows = []
    for w in wnids:
        c = by.get(w)
        if c is None:
            continue
        rows.append(
            {
                "concept": c["name"],
                "hierarchy path": SEP.join(concept_path(c)),
                "reliable": c.get("reliable", True),
                "probe score": round(float(c["score"]), 3),
                "probe threshold": round(float(c.get("threshold", 0.5)), 3),
                "probe present": c.get("probe_present"),
                "model probability": round(float(c.get("model_probability", 0)), 3),
                "present": c.get("present"),
                "region %": round(100 * float(c.get("area_fraction", 0)), 1),
            }
        )
    return pd.DataFrame(rows, columns=CONCEPT_COLUMNS)


def neurons_frame(c: dict, removed: int = 0) -> pd.DataFrame:
    """The concept's top neurons in the bank (global Shapley value) for the bar chart (removed: how many
    of the top ones are ablated)."""
    rows = []
    for i, n in enumerate(c.get("neurons") or []):
        rows.append(
            {
                "neuron": f"#{n['neuron']}",
                "shapley": float(n["shapley"]),
                "shapley_se": float(n.get("shapley_se", 0)),
                "activation": float(n.get("activation", 0)),
                "contribution": float(n.get("contribution", 0)),
                "status": "removed" if i < removed else "kept",
            }
        )
    return pd.DataFrame(
        rows, columns=["neuron", "shapley", "shapley_se", "activation", "contribution", "status"]
    )


IMAGE_NEURON_COLUMNS = ["neuron", "signed", "shapley (abs)", "signed rank", "abs rank", "global rank",
                        "activation", "status"]  # fmt: skip


def image_neurons_frame(c: dict, removed: int = 0) -> pd.DataFrame:
    """This image's top neurons for the concept (``image_neurons``, largest signed value first)."""
    rows = [
        {
            "neuron": f"#{n['neuron']}",
            "signed": float(n["signed"]),
            "shapley (abs)": float(n["shapley"]),
            "signed rank": n.get("signed_rank"),
            "abs rank": n.get("rank"),
            "global rank": n.get("global_rank"),
            "activation": float(n.get("activation", 0)),
            "status": "removed" if i < removed else "kept",
        }
        for i, n in enumerate(c.get("image_neurons") or [])
    ]
    return pd.DataFrame(rows, columns=IMAGE_NEURON_COLUMNS)


def neuron_frame(answer: dict) -> pd.DataFrame:
    rows = [
        {
            "rank": i + 1,
            "concept": c["name"],
            "wnid": c["wnid"],
            "shapley": round(float(c["shapley"]), 6),
            "rank in concept": c.get("rank_in_concept"),
        }
        for i, c in enumerate(answer.get("concepts") or [])
    ]
    return pd.DataFrame(rows, columns=["rank", "concept", "wnid", "shapley", "rank in concept"])


def neuron_label_markdown(answer: dict) -> str:
    """The looked-up neuron's label (its largest-φ concept, with its NetDissect IoU) and where its exemplars
    come from, or that the bank has none."""
    n, label, ex = answer.get("neuron"), answer.get("label") or {}, answer.get("exemplars") or {}
    lines = [f"### Neuron #{n}"]
    if label:
        iou = f", IoU {label['iou']:.3f} with its regions" if label.get("iou") is not None else ""
        lines.append(f"**Label: {label['name']}** (largest Shapley value {label['shapley']:.4f}{iou})")
        best = label.get("best_iou")
        if best:
            lines.append(
                f"NetDissect's label (largest IoU over the build images): **{best['name']}** "
                f"(IoU {best['iou']:.3f})"
            )
    if ex.get("available"):
        w = ex.get("window_cells")
        window = (
            f"; {w:g} × {w:g} cells of the bank layer around the peak" if isinstance(w, int | float) else ""
        )
        lines.append(
            f"Its top {ex['k']} image patches in the bank's build images (largest activation first{window}):"
        )
    else:
        lines.append(f"_No exemplars: {ex.get('reason', 'the service sent none')}._")
    return "  \n".join(lines)


def exemplar_items(answer: dict) -> list[tuple[np.ndarray, str]]:
    """The neuron's exemplars as gallery items: (thumbnail, 'rank · activation · image')."""
    out = []
    for p in (answer.get("exemplars") or {}).get("patches") or []:
        with Image.open(io.BytesIO(base64.b64decode(p["thumbnail"]))) as im:
            out.append((np.asarray(im.convert("RGB")), f"{p['rank']} · {p['activation']:.2f} · {p['image']}"))
    return out


def neuron_choices(c: dict) -> list[tuple[str, int]]:
    """The neurons of the focused concept's two charts, to open their exemplars: this image's, then the
    bank's not already listed."""
    out, seen = [], set()
    for n in c.get("image_neurons") or []:
        out.append((f"#{n['neuron']} · this image, signed {float(n['signed']):+.4f}", int(n["neuron"])))
        seen.add(int(n["neuron"]))
    for n in c.get("neurons") or []:
        if int(n["neuron"]) not in seen:
            out.append((f"#{n['neuron']} · the bank, global {float(n['shapley']):.4f}", int(n["neuron"])))
    return out


def ablation_markdown(focus: dict, removed: list[int], after: dict, source: str = IMAGE_SOURCE) -> str:
    """What the network did without the removed neurons (``after``: the endpoint's answer with
    ``ablate``; its ``ablation`` block holds the unablated side): the class prediction before → after,
    and the focused concept's (and the other shown concepts') probe score and model probability."""
    block = after.get("ablation") or {}
    before = {x["wnid"]: x for x in (block.get("before") or {}).get("concepts") or []}
    now = {x["wnid"]: x for x in after.get("concepts") or []}
    fb, fa = before.get(focus["wnid"]), now.get(focus["wnid"])
    if fa is None or fb is None:
        return "_the ablated answer has no such concept_"
    cls = block.get("class") or {}
    ids = ", ".join(f"#{n}" for n in removed)
    where = (
        "inside the network" if block.get("mode", "network") == "network" else "in the concept probes only"
    )
    lines = []
    if cls:
        change = 100 * (cls["probability_after"] - cls["probability_before"]) + 0.0
        lines.append(
            f"**Class {cls['name']}**: {_pct(cls['probability_before'])} → **{_pct(cls['probability_after'])}** "
            f"({change:+.1f} points)"
        )
        pb, pa = (block.get("before") or {}).get("prediction") or [], after.get("prediction") or []
        if pb and pa:
            lines += ["", "| | before | after ablation |", "|---:|---|---|"]
            for i in range(min(len(pb), len(pa))):
                lines.append(
                    f"| {i + 1} | {pb[i]['name']} {_pct(pb[i]['probability'])} "
                    f"| {pa[i]['name']} {_pct(pa[i]['probability'])} |"
                )
    d = round(fa["score"] - fb["score"], 3) + 0.0  # no "-0.000"
    lines += [
        "",
        f"**{focus['name']}**: probe score {fb['score']:.3f} → **{fa['score']:.3f}** ({d:+.3f}); model "
        f"probability {fb['model_probability']:.3f} → {fa['model_probability']:.3f}; "
        f"{'present' if fb['present'] else 'absent'} → {'present' if fa['present'] else 'absent'}",
        "",
        f"Removed ({source}; set to the bank's baseline {where}): {ids}",
    ]
    others = [w for w in now if w != focus["wnid"] and w in before]
    if others:
        lines += [
            "",
            "| concept | probe before | after | change | model before | after |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for w in others:
            b, a = before[w], now[w]
            lines.append(
                f"| {a['name']} | {b['score']:.3f} | {a['score']:.3f} | {a['score'] - b['score']:+.3f} "
                f"| {b['model_probability']:.3f} | {a['model_probability']:.3f} |"
            )
    return "\n".join(lines)


ABLATION_HINT = (
    "_Move the slider to remove this concept's top neurons inside the network: the class "
    "prediction, the map, the box and the scores before and after._"
)


def warn_markdown(message: str) -> str:
    """An error line for the status area (HTML-escaped; `code` spans kept)."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(message, quote=False))
    return f"<div class='hint-error'>⚠️ {text}</div>"


# ----------------------------------------------------------------------------------------------
# the page


class HintApp:
    """The event handlers (each catches :class:`HintError` and shows it) and :meth:`build`."""

    def __init__(self, client: HintClient, examples_dir: str | Path | None = None):
        self.client = client
        self.examples = example_images(examples_dir)

    # -- handlers: each returns one value per output; gr.skip() leaves an output as it is

    def _fail(self, message: str, n_outputs: int):
        import gradio as gr

        gr.Warning(message.replace("`", ""), duration=15)  # the toast shows text as it is
        return (warn_markdown(message),) + tuple(gr.skip() for _ in range(n_outputs - 1))

    def _guard(self, fn, n_outputs: int, *args):
        try:
            return fn(*args)
        except HintError as e:
            log.warning("%s", e)
            return self._fail(str(e), n_outputs)
        except Exception as e:  # noqa: BLE001 - the page shows one line, the log keeps the traceback
            log.exception("unexpected error")
            return self._fail(f"internal error: {type(e).__name__}: {e}", n_outputs)

    def status_line(self, result: dict | None = None, seconds: float | None = None) -> str:
        if result is None:
            return f"Endpoint: `{self.client.url}` ({self.client.describe_auth()})"
        m = result.get("model", {})
        return (
            f"Explained in {seconds:.1f} s by `{m.get('backbone')}:{m.get('layer')}`, bank `{m.get('bank_id')}` "
            f"— endpoint `{self.client.url}`"
        )

    def check_service(self):
        if self.client.ping():
            return self.status_line()
        return warn_markdown(f"service unreachable at {self.client.endpoint} — start it with `make serve`")

    N_EXPLAIN = 17

    def explain(self, path, threshold, state):
        return self._guard(self._explain, self.N_EXPLAIN, path, threshold, state)

    def _explain(self, path, threshold, state):
        import gradio as gr

        if not path:
            raise HintError("upload an image (or pick an example) first")
        t0 = time.perf_counter()
        result = self.client.explain(
            upload_bytes(path),
            concepts=["all"],
            top_k=MAX_NEURONS,
            threshold=float(threshold),
            return_maps=True,
        )
        seconds = time.perf_counter() - t0
        if not result["concepts"]:
            raise HintError("the service answered with no concepts (empty bank?)")
        state = {"path": str(path), "threshold": float(threshold), "result": result}
        choices = concept_choices(result["concepts"])
        selected = default_selection(result)
        focus = selected[-1]
        gallery = self.gallery_items(state, selected)
        fc = self._concept(state, focus)
        before = self._focus_image(state, fc)
        return (
            self.status_line(result, seconds),
            prediction_markdown(result),
            gr.Dropdown(choices=choices, value=selected, interactive=True),
            concepts_frame(result["concepts"], selected),
            gr.Gallery(value=gallery, columns=max(1, min(4, len(gallery)))),
            gr.Dropdown(
                choices=concept_choices(result["concepts"], with_scores=False), value=focus, interactive=True
            ),
            *self.bars(fc),
            self._opener(fc),
            self._slider(fc),
            before,
            None,
            ABLATION_HINT,
            gr.Column(visible=True),
            state,
        )

    @staticmethod
    def _opener(c: dict):
        import gradio as gr

        return gr.Dropdown(choices=neuron_choices(c), value=None, interactive=True)

    @staticmethod
    def _slider(c: dict):
        import gradio as gr

        k = min(MAX_NEURONS, max(len(c.get("neurons") or []), len(c.get("image_neurons") or [])))
        return gr.Slider(minimum=0, maximum=max(k, 1), value=0, step=1, interactive=k > 0)

    @staticmethod
    def bars(c: dict, removed: int = 0, source: str = IMAGE_SOURCE):
        """This image's neurons for the concept (signed bars) and the bank's global ranking, each as a
        chart and a table; the ``removed`` top ones of the ``source`` ranking in red."""
        own, glob = (removed, 0) if source == IMAGE_SOURCE else (0, removed)
        name = c.get("name", "?")
        return (
            image_neuron_bars(
                c.get("image_neurons") or [], own, f"{name} on this image: signed Shapley value"
            ),
            image_neurons_frame(c, own),
            neuron_bars(c.get("neurons") or [], glob, f"{name} in the bank: global Shapley value ± s.e."),
            neurons_frame(c, glob),
        )

    def _concept(self, state: dict, wnid: str) -> dict:
        for c in state["result"]["concepts"]:
            if c["wnid"] == wnid:
                return c
        raise HintError(f"concept {wnid} is not in the last explanation")

    def _image(self, state: dict) -> tuple[np.ndarray, tuple[int, int]]:
        size = (int(state["result"]["image"]["width"]), int(state["result"]["image"]["height"]))
        try:
            return display_image(state["path"], *size), size
        except OSError as e:
            raise HintError(f"the uploaded image is gone ({e}); upload it again") from None

    def gallery_items(self, state: dict, wnids: list[str]) -> list[tuple[np.ndarray, str]]:
        image, size = self._image(state)
        return [
            (concept_overlay(image, self._concept(state, w), size), concept_caption(self._concept(state, w)))
            for w in wnids
        ]

    def _focus_image(self, state: dict, c: dict) -> np.ndarray:
        image, size = self._image(state)
        return concept_overlay(image, c, size)

    N_SELECT = 3

    def select(self, wnids, state):
        return self._guard(self._select, self.N_SELECT, wnids, state)

    def _select(self, wnids, state):
        import gradio as gr

        if not state:
            return gr.skip(), gr.skip(), gr.skip()
        wnids = list(wnids or [])
        items = self.gallery_items(state, wnids)
        return (
            self.status_line(),
            gr.Gallery(value=items, columns=max(1, min(4, len(items)))),
            concepts_frame(state["result"]["concepts"], wnids),
        )

    N_FOCUS = 10

    def focus(self, wnid, state):
        return self._guard(self._focus, self.N_FOCUS, wnid, state)

    def _focus(self, wnid, state):
        import gradio as gr

        if not state or not wnid:
            return (gr.skip(),) * self.N_FOCUS
        c = self._concept(state, wnid)
        return (
            gr.skip(),
            *self.bars(c),
            self._opener(c),
            self._slider(c),
            self._focus_image(state, c),
            None,
            ABLATION_HINT,
        )

    N_ABLATE = 8

    def ablate(self, k, source, wnid, selected, state):
        return self._guard(self._ablate, self.N_ABLATE, k, source, wnid, selected, state)

    def _ablate(self, k, source, wnid, selected, state):
        import gradio as gr

        if not state:
            raise HintError("explain an image first")
        if not wnid:
            raise HintError("pick a concept for the neurons first")
        c = self._concept(state, wnid)
        k, source = int(k or 0), source or IMAGE_SOURCE
        before_img = self._focus_image(state, c)
        if k <= 0:
            return gr.skip(), *self.bars(c), before_img, None, "_No neuron removed._"
        ranked = c.get("image_neurons") if source == IMAGE_SOURCE else c.get("neurons")
        ids = [n["neuron"] for n in (ranked or [])[:k]]
        if not ids:
            raise HintError(f"the explanation lists no {source} for {c['name']}")
        wanted = [wnid] + [w for w in (selected or []) if w != wnid]
        after = self.client.explain(
            upload_bytes(state["path"]),
            concepts=wanted,
            ablate=ids,
            top_k=1,
            threshold=state["threshold"],
            return_maps=True,
            image_neurons=False,
        )
        after_by = {a["wnid"]: a for a in after["concepts"]}
        image, size = self._image(state)
        after_img = concept_overlay(image, after_by[wnid], size) if wnid in after_by else None
        return (
            self.status_line(),
            *self.bars(c, removed=len(ids), source=source),
            before_img,
            after_img,
            ablation_markdown(c, ids, after, source),
        )

    N_NEURON = 4

    def neuron(self, n):
        return self._guard(self._neuron, self.N_NEURON, n)

    def _neuron(self, n):
        if n is None:
            raise HintError("type a neuron number")
        answer = self.client.neuron(int(n))
        items = exemplar_items(answer)
        return self.status_line(), neuron_frame(answer), neuron_label_markdown(answer), items

    def open_neuron(self, n):
        """A neuron picked from the charts' list: its look-up (number, table, label, exemplars)."""
        import gradio as gr

        if n is None:
            return (gr.skip(),) * (self.N_NEURON + 1)
        out = self.neuron(n)
        return out[0], (gr.skip() if "hint-error" in str(out[0]) else int(n)), *out[1:]

    # -- layout

    def build(self):
        import gradio as gr

        with gr.Blocks(title="HINT — hierarchical neuron concept explainer", analytics_enabled=False) as demo:
            state = gr.State(None)
            gr.Markdown(
                "# HINT — hierarchical neuron concept explainer\n"
                "Which hidden neurons of the CNN respond to which concepts of a hierarchy (WordNet by default), and where "
                "(Wang et al., CVPR 2022). Upload an image and press **Explain**."
            )
            status = gr.Markdown(self.status_line(), elem_id="status")
            with gr.Row(equal_height=False):
                with gr.Column(scale=2):
                    image = upload_image(
                        type="filepath",
                        image_mode=None,
                        label=f"Image (up to {MAX_UPLOAD_MB} MB)",
                        sources=["upload", "clipboard"],
                        height=300,
                        elem_id="image",
                    )
                    gr.Examples(
                        examples=[[p] for p in self.examples],
                        inputs=[image],
                        label="Examples",
                        example_labels=list(EXAMPLES),
                    )
                    with gr.Accordion("Options", open=False):
                        threshold = gr.Slider(
                            0.05,
                            0.95,
                            value=OPTIONS["threshold"].default,
                            step=0.05,
                            label="Region threshold",
                            info="share of a concept map's maximum that outlines its box and "
                            "the region its neurons are measured on",
                        )
                    explain_btn = gr.Button("Explain", variant="primary", elem_id="explain")
                with gr.Column(scale=3):
                    prediction = gr.Markdown(
                        "_The prediction and its hierarchy chain appear here._", elem_id="prediction"
                    )
            with gr.Column(visible=False) as results:
                picker = gr.Dropdown(
                    choices=[],
                    value=[],
                    multiselect=True,
                    filterable=True,
                    elem_id="picker",
                    label="Concepts: every built concept, name · hierarchy path (probe score, model probability)",
                    info="type a name to search; pick several to compare them side by side; (unreliable): its "
                    "probe does not beat chance on held-out images, its map and box are not to be trusted",
                )
                concept_table = gr.Dataframe(
                    headers=CONCEPT_COLUMNS,
                    interactive=False,
                    max_height=240,
                    elem_id="concept-table",
                    label="probe beside model",
                )
                gallery = gr.Gallery(
                    label="Concept maps and boxes",
                    columns=4,
                    height=None,
                    format="png",
                    object_fit="contain",
                    elem_id="overlays",
                )
                gr.Markdown(LEGEND)
                focus = gr.Dropdown(
                    choices=[], label="Neurons of the concept", filterable=True, elem_id="focus"
                )
                with gr.Row(equal_height=False):
                    with gr.Column():
                        image_bars = gr.Plot(
                            label="This image", show_label=False, format="png", elem_id="image-neurons"
                        )
                        with gr.Accordion("this image's neurons as a table", open=False):
                            image_table = gr.Dataframe(
                                headers=IMAGE_NEURON_COLUMNS,
                                interactive=False,
                                max_height=300,
                                elem_id="image-neurons-table",
                            )
                    with gr.Column():
                        bars = gr.Plot(label="The bank", show_label=False, format="png", elem_id="neurons")
                        with gr.Accordion(
                            "the bank's neurons as a table, with this image's activation", open=False
                        ):
                            bars_table = gr.Dataframe(
                                headers=list(neurons_frame({}).columns),
                                interactive=False,
                                max_height=300,
                                elem_id="neurons-table",
                            )
                opener = gr.Dropdown(
                    choices=[],
                    label="Open a neuron's exemplars: the neurons of these charts",
                    filterable=True,
                    elem_id="open-neuron",
                    info="shows its image patches and label in the neuron look-up below",
                )
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2):
                        source = gr.Radio(
                            [IMAGE_SOURCE, GLOBAL_SOURCE],
                            value=IMAGE_SOURCE,
                            label="Remove",
                            elem_id="source",
                        )
                        slider = gr.Slider(
                            0,
                            MAX_NEURONS,
                            value=0,
                            step=1,
                            interactive=False,
                            elem_id="ablate",
                            label="the top-k neurons of this concept (inside the network)",
                        )
                        ablation = gr.Markdown(elem_id="ablation")
                    with gr.Column(scale=3), gr.Row():
                        before = gr.Image(
                            label="before", format="png", interactive=False, height=260, elem_id="before"
                        )
                        after = gr.Image(
                            label="after ablation",
                            format="png",
                            interactive=False,
                            height=260,
                            elem_id="after",
                        )
            with gr.Accordion(
                "Neuron look-up: which concepts does a neuron serve, and what does it look for?",
                open=True,
                elem_id="neuron-lookup",
            ):
                with gr.Row():
                    neuron_no = gr.Number(
                        value=0, precision=0, minimum=0, label="Neuron", scale=1, elem_id="neuron-no"
                    )
                    neuron_btn = gr.Button("Look up", scale=0)
                neuron_label = gr.Markdown(elem_id="neuron-label")
                neuron_grid = gr.Gallery(
                    label="Exemplars: the neuron's top image patches (rank · activation · image)",
                    columns=9,
                    height=None,
                    format="jpeg",
                    object_fit="contain",
                    elem_id="neuron-grid",
                )
                neuron_table = gr.Dataframe(
                    headers=["rank", "concept", "wnid", "shapley", "rank in concept"],
                    interactive=False,
                    max_height=320,
                    elem_id="neuron-table",
                )

            neuron_outputs = [image_bars, image_table, bars, bars_table]
            explain_btn.click(
                self.explain,
                [image, threshold, state],
                [
                    status,
                    prediction,
                    picker,
                    concept_table,
                    gallery,
                    focus,
                    *neuron_outputs,
                    opener,
                    slider,
                    before,
                    after,
                    ablation,
                    results,
                    state,
                ],
                api_name="explain",
            )
            picker.input(self.select, [picker, state], [status, gallery, concept_table], api_name="select")
            focus.input(
                self.focus,
                [focus, state],
                [status, *neuron_outputs, opener, slider, before, after, ablation],
                api_name="focus",
            )
            ablate_outputs = [status, *neuron_outputs, before, after, ablation]
            slider.release(
                self.ablate,
                [slider, source, focus, picker, state],
                ablate_outputs,
                api_name="ablate",
                trigger_mode="always_last",
            )
            source.input(
                self.ablate,
                [slider, source, focus, picker, state],
                ablate_outputs,
                api_visibility="private",
                trigger_mode="always_last",
            )
            lookup = [status, neuron_table, neuron_label, neuron_grid]
            neuron_btn.click(self.neuron, [neuron_no], lookup, api_name="neuron")
            neuron_no.submit(self.neuron, [neuron_no], lookup, api_visibility="private")
            opener.input(self.open_neuron, [opener], [status, neuron_no, *lookup[1:]], api_name="open_neuron")
            demo.load(self.check_service, None, [status], api_visibility="private")
        return demo


def upload_image(**kw):
    """A ``gr.Image`` whose upload step never fails: a file PIL cannot open there (a text file, a
    decompression bomb) reaches the event handler as its path, and :func:`check_upload` says what is
    wrong in the page's status line instead of Gradio's generic error. (The instance's ``preprocess`` is
    wrapped: a subclass of a Gradio component would make Gradio write a ``.pyi`` stub next to this file.)"""
    import gradio as gr

    image = gr.Image(**kw)
    preprocess = image.preprocess

    def tolerant(payload):
        try:
            return preprocess(payload)
        except Exception:  # noqa: BLE001 - checked, with a readable message, by the event handler
            return str(payload.path) if payload is not None and getattr(payload, "path", None) else None

    image.preprocess = tolerant
    return image


CSS = """
#overlays .grid-wrap, #neuron-grid .grid-wrap { min-height: 0 !important; height: auto !important;
                                                max-height: none !important; }
.hint-error { color: #b00020; font-weight: 600; padding: 0.4em 0.6em; border: 1px solid #b00020;
              border-radius: 6px; background: #fff0f0; }
"""


def launch(
    client: HintClient,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    quiet: bool = False,
    prevent_thread_lock: bool = False,
    examples_dir: str | Path | None = None,
):
    """Build and serve the page; returns the Blocks (running in a thread with prevent_thread_lock)."""
    hint_app = HintApp(client, examples_dir)
    demo = hint_app.build()
    demo.queue(default_concurrency_limit=2)
    demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=MAX_UPLOAD,
        show_error=False,
        quiet=quiet,
        prevent_thread_lock=prevent_thread_lock,
        allowed_paths=[str(Path(hint_app.examples[0]).parent)],
        ssr_mode=False,
        css=CSS,
        footer_links=["api"],
    )
    return demo
