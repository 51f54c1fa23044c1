"""The app's API through gradio_client: the app runs in a thread of this process against a FAKE
endpoint (tests/e2e/fake_endpoint.py, a subprocess) whose answers come from the real
``hint.explain.explainer.Explainer`` with the committed bank — no TorchServe or Java needed."""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from harness import dead_endpoint, fake_endpoint, free_port  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    # gradio's queue vs pandas 3, not ours
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
gradio_client = pytest.importorskip("gradio_client")

from app.client import HintClient  # noqa: E402
from app.drawing import BOX_COLOR, KEPT_COLOR, POSITIVE_COLOR, REMOVED_COLOR  # noqa: E402
from app.ui import GLOBAL_SOURCE, IMAGE_SOURCE  # noqa: E402

FELINE, WHOLE, PERSON, ANIMAL, BIRD = "n02120997", "n00003553", "n00007846", "n00015388", "n01503061"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("ts") / "key_file.json"
    with fake_endpoint(key_file) as url:
        yield url, key_file


def start_app(client: HintClient, examples_dir: Path):
    from app.ui import launch

    port = free_port()
    demo = launch(client, "127.0.0.1", port, quiet=True, prevent_thread_lock=True, examples_dir=examples_dir)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def app(endpoint, tmp_path_factory):
    url, key_file = endpoint
    examples = tmp_path_factory.mktemp("examples")
    demo, app_url = start_app(HintClient(url, token_file=key_file), examples)
    yield gradio_client.Client(app_url, verbose=False), examples
    demo.close()


def magenta(path) -> int:
    a = np.asarray(Image.open(path).convert("RGB"))
    return int((a == BOX_COLOR).all(-1).sum())


def plot_pixels(plot, rgb_hex: str) -> int:
    """How many pixels of one colour the matplotlib plot (as gradio_client returns it) has."""
    raw = base64.b64decode(plot["plot"].split(",", 1)[1])
    a = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).astype(int)
    want = [int(rgb_hex[i : i + 2], 16) for i in (1, 3, 5)]
    return int((np.abs(a - want).sum(-1) <= 6).sum())


def gallery_paths(gallery) -> list[tuple[str, str]]:
    items = gallery["value"] if isinstance(gallery, dict) else gallery
    return [
        (it["image"] if isinstance(it["image"], str) else it["image"]["path"], it.get("caption"))
        for it in items
    ]


@pytest.fixture(scope="module")
def explained(app):
    client, examples = app
    out = client.predict(gradio_client.handle_file(str(examples / "chelsea.jpg")), 0.5, api_name="/explain")
    return client, out


def test_explain(explained):
    _, out = explained
    (
        status,
        prediction,
        picker,
        concepts,
        gallery,
        focus,
        image_bars,
        image_table,
        bars,
        table,
        opener,
        slider,
        before,
        after,
        ablation,
    ) = out
    assert status.startswith("Explained in") and "efficientnet_lite0" in status
    assert re.search(r"^### .*cat — \d+\.\d %", prediction), prediction
    assert "**feline**" in prediction and "**whole**" in prediction and " › " in prediction
    # every built concept, searchable by name, with its WordNet path; unreliable ones tagged
    labels = {v: lab for lab, v in picker["choices"]}
    assert len(labels) == 249
    assert (
        labels[FELINE].startswith("feline  ·  physical entity")
        and "mammal › placental › carnivore" in labels[FELINE]
    )
    assert "(probe " in labels[FELINE] and ", model " in labels[FELINE]
    assert sum(lab.endswith("(unreliable)") for lab in labels.values()) == 51
    chain = re.findall(r"\*\*([^*]+?)\*\* \d\.\d\d", prediction)
    names = {w: re.match(r"(.+?)(  ·  |  \(|$)", lab).group(1) for w, lab in labels.items()}
    assert names[picker["value"][0]] in chain and names[picker["value"][-1]] in chain
    items = gallery_paths(gallery)
    assert len(items) == len(picker["value"]) == 4
    # the probe beside the model, per chosen concept
    assert (
        concepts["headers"][:6]
        == ["concept", "probe score", "probe threshold", "probe present", "model probability", "present"]
        and len(concepts["data"]) == 4
    )
    assert all(" · probe " in cap and " · model " in cap for _, cap in items)
    assert all(magenta(p) > 50 for p, cap in items if " · present" in cap), (
        "every present concept has its box"
    )
    assert focus["value"] == picker["value"][-1]
    # this image's neurons (signed) beside the bank's
    assert plot_pixels(image_bars, POSITIVE_COLOR) > 500 and plot_pixels(image_bars, REMOVED_COLOR) == 0
    assert len(image_table["data"]) == 20
    signed = [row[1] for row in image_table["data"]]
    assert signed == sorted(signed, reverse=True) and signed[0] > 0
    assert plot_pixels(bars, KEPT_COLOR) > 500 and plot_pixels(bars, REMOVED_COLOR) == 0
    assert len(table["data"]) == 20 and table["data"][0][0].startswith("#")
    shap = [row[1] for row in table["data"]]
    assert shap == sorted(shap, reverse=True)
    assert slider["maximum"] == 20 and slider["value"] == 0
    # the charts' neurons, to open their exemplars: this image's 20, then the bank's others
    ids = [v for _, v in opener["choices"]]
    assert (
        ids[:20] == [int(r[0].lstrip("#")) for r in image_table["data"]] and len(ids) == len(set(ids)) >= 20
    )
    assert Path(before).is_file() and after is None


def test_select_paper_columns(explained):
    client, _ = explained
    status, gallery, concepts = client.predict([WHOLE, PERSON, ANIMAL, BIRD], api_name="/select")
    captions = [c for _, c in gallery_paths(gallery)]
    assert [c.split(" · ")[0] for c in captions] == ["whole", "person", "animal", "bird"]
    assert gallery["columns"] == 4
    assert [r[0] for r in concepts["data"]] == ["whole", "person", "animal", "bird"]
    assert "absent, unreliable" in captions[1], "person: its probe does not beat chance"


@pytest.mark.parametrize("source", [IMAGE_SOURCE, GLOBAL_SOURCE])
def test_ablation_through_the_network_matches_the_endpoint(explained, app, endpoint, source):
    client, _ = explained
    examples = app[1]
    out = client.predict(10, source, FELINE, [WHOLE, FELINE], api_name="/ablate")
    status, image_bars, image_table, bars, table, before, after, md = out
    assert Path(before).is_file() and Path(after).is_file()
    shown = image_table if source == IMAGE_SOURCE else table
    assert [row[-1] for row in shown["data"]].count("removed") == 10
    assert plot_pixels(image_bars if source == IMAGE_SOURCE else bars, REMOVED_COLOR) > 200, (
        "removed bars are red"
    )
    m = re.search(r"\*\*Class (.+?)\*\*: (\d+\.\d) % → \*\*(\d+\.\d) %\*\*", md)
    assert m, md
    f = re.search(r"\*\*feline\*\*: probe score (\d\.\d{3}) → \*\*(\d\.\d{3})\*\*", md)
    assert f, md
    assert "| whole |" in md and "inside the network): #" in md and source in md
    # the same request straight to the endpoint gives the numbers the page shows
    url, key_file = endpoint
    direct = HintClient(url, token_file=key_file)
    from app.ui import upload_bytes

    data = upload_bytes(examples / "chelsea.jpg")
    base = direct.explain(data, concepts=[FELINE], top_k=10, threshold=0.5)["concepts"][0]
    ids = [n["neuron"] for n in base["image_neurons" if source == IMAGE_SOURCE else "neurons"]]
    abl = direct.explain(data, concepts=[FELINE], ablate=ids, threshold=0.5)
    cls = abl["ablation"]["class"]
    assert abl["ablation"]["mode"] == "network" and m.group(1) == cls["name"]
    # the page rounds; the two runs may differ in the last float32 digits (threads)
    assert float(m.group(2)) == pytest.approx(100 * cls["probability_before"], abs=0.06)
    assert float(m.group(3)) == pytest.approx(100 * cls["probability_after"], abs=0.06)
    assert float(f.group(1)) == pytest.approx(base["score"], abs=6e-4)
    assert float(f.group(2)) == pytest.approx(abl["concepts"][0]["score"], abs=6e-4)
    assert cls["probability_after"] < cls["probability_before"], (
        "removing feline's neurons costs the cat class"
    )
    out = client.predict(0, source, FELINE, [FELINE], api_name="/ablate")
    assert out[6] is None and "No neuron removed" in out[7]


def test_neuron_lookup(explained):
    client, _ = explained
    status, table, label, grid = client.predict(45, api_name="/neuron")
    rows = table["data"]
    assert label.startswith("### Neuron #45") and "Label: " in label and "IoU" in label
    assert len(grid) == 9 and all(it.get("caption", "").count(" · ") == 2 for it in grid)
    import json

    bank = json.loads(
        (Path(__file__).resolve().parents[2] / "model_store" / "hint-bank" / "manifest.json").read_text()
    )
    assert len(rows) == len(bank["concepts"]), "one row per concept of the bank"
    shap = [r[3] for r in rows]
    assert shap == sorted(shap, reverse=True)
    status, *_ = client.predict(100000, api_name="/neuron")
    assert "hint-error" in status and "HTTP 400" in status and "out of range" in status
    # opened from the charts' list: the number box follows
    status, number, table, label, grid = client.predict(275, api_name="/open_neuron")
    assert number == 275 and label.startswith("### Neuron #275") and len(grid) == 9


def test_uploads_that_are_not_images_get_the_apps_own_error(app, tmp_path):
    """A text file, or a PNG claiming 30000x30000 pixels: Gradio's own upload step cannot open them;
    the page answers with its readable status line, not Gradio's generic error."""
    import struct
    import zlib

    client, _ = app
    text = tmp_path / "notes.txt"
    text.write_text("hello, not an image")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    huge = tmp_path / "huge.png"  # claims 30000 x 30000 pixels in a few bytes
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    huge.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    for path, words in ((text, "notes.txt is not an image the service reads"), (huge, "900 megapixels")):
        out = client.predict(gradio_client.handle_file(str(path)), 0.5, api_name="/explain")
        assert "hint-error" in out[0] and words in out[0], out[0]


def test_explain_without_image(app):
    client, _ = app
    out = client.predict(None, 0.5, api_name="/explain")
    assert "upload an image" in out[0]


def test_unreachable_and_wrong_token(endpoint, tmp_path):
    url, _ = endpoint
    dead = dead_endpoint()
    for hint_client, expect in [
        (
            HintClient(dead),
            rf"service unreachable at {re.escape(dead)} — start it with <code>make serve</code>",
        ),
        (HintClient(url, token="WRONG"), r"HTTP 401.*Token Authorization failed.*token"),
    ]:
        demo, app_url = start_app(hint_client, tmp_path)
        try:
            c = gradio_client.Client(app_url, verbose=False)
            out = c.predict(gradio_client.handle_file(str(tmp_path / "coffee.jpg")), 0.5, api_name="/explain")
            assert re.search(expect, out[0]), out[0]
            assert "Traceback" not in out[0]
        finally:
            demo.close()
