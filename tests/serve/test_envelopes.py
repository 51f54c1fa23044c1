"""KServe envelopes (config.properties ``service_envelope=kserve`` / ``kservev2``): what TorchServe 0.12's
envelopes hand the handler (``hint.serve.request.parse_envelope``: instances, v2 inputs, every error one line
naming its item), the handler wrapped in TorchServe's own envelope classes in-process (the same document
as a plain request, ``{"predictions": [...]}`` / v2 ``outputs``, the request's status), and in the slow
tests a real TorchServe started with each envelope (archive built with ``batchSize: 1``).
"""

from __future__ import annotations

import base64
import json
import random
import shutil
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest
import requests
from support import torchserve as bench
from support.handler import (
    SCHEMA,
    FakeContext,
    assert_same_answer,
    hint_handler,
    jpeg,
    shared_handler,
    tabby,
)
from ts.torch_handler.request_envelope.kserve import KServeEnvelope
from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope

from hint.serve.options import Limits, RequestError
from hint.serve.request import ExplainRequest, NeuronRequest, parse_envelope

LIMITS = Limits(channels=112, max_instances=4)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def image() -> str:
    """The tabby photo, base64 (as a KServe client sends it)."""
    return b64(jpeg(tabby()))


def v2_input(name: str, element, datatype: str = "BYTES") -> dict:
    return {"name": name, "shape": [1], "datatype": datatype, "data": [element]}


def schema_of(name: str) -> dict:
    """docs/response.schema.json with ``#/$defs/<name>`` as its root."""
    return {**{k: v for k, v in SCHEMA.items() if k != "oneOf"}, "$ref": f"#/$defs/{name}"}


def v2_answers(doc: dict) -> list[dict]:
    """The answers a v2 response holds as JSON text, each checked against the schema."""
    jsonschema.validate(doc, schema_of("kserve_v2"))
    out = [json.loads(o["data"][0]) for o in doc["outputs"]]
    for a in out:
        jsonschema.validate(a, SCHEMA)
    return out


# ------------------------------------------------------------------------------------------ parsing


def test_v1_instances_objects_strings_json_text_and_neurons(image):
    small = b64(jpeg(tabby().resize((64, 48))))
    out = parse_envelope(
        [
            {"image": image, "top_k": 2, "concepts": ["all"]},
            small,
            json.dumps({"image": small, "seed": 3}),
            {"neuron": 7},
        ],
        LIMITS,
        "kserve",
    )
    assert [type(r) for r in out] == [ExplainRequest, ExplainRequest, ExplainRequest, NeuronRequest]
    assert out[0].options["top_k"] == 2 and out[0].options["concepts"] == "all" and out[0].size == (451, 300)
    assert out[1].size == (64, 48) and out[1].options["top_k"] == 5, "a bare base64 string: default options"
    assert out[2].options["seed"] == 3 and out[3].neuron == 7


def test_v2_inputs_bytes_elements(image):
    out = parse_envelope(
        [
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": image},  # as the envelope hands it
            {
                "name": "with-options",
                "shape": [1],
                "datatype": "BYTES",
                "data": json.dumps({"image": image, "top_k": 1}),
            },
            {"name": "object", "shape": [1], "datatype": "BYTES", "data": {"image": image, "threshold": 0.4}},
        ],
        LIMITS,
        "kservev2",
    )
    assert all(isinstance(r, ExplainRequest) for r in out)
    assert out[1].options["top_k"] == 1 and out[2].options["threshold"] == 0.4


@pytest.mark.parametrize(
    "envelope, items, code, words",
    [
        (
            "kserve",
            None,
            400,
            'a KServe v1 request needs "instances": a list like [{"image": "<base64>"}], got no',
        ),
        ("kserve", [], 400, "got an empty list"),
        ("kserve", {"image": "x"}, 400, "got an object"),
        ("kserve", ["x"] * 5, 413, "5 instances in one request; at most 4"),
        ("kservev2", [], 400, 'a KServe v2 request needs "inputs": a list like [{"name": "image"'),
        ("kservev2", [{}] * 5, 413, "5 inputs in one request; at most 4"),
    ],
)
def test_a_wrong_request_is_one_error(envelope, items, code, words):
    err = parse_envelope(items, LIMITS, envelope)
    assert isinstance(err, RequestError) and err.code == code and words in err.message, err.message


@pytest.mark.parametrize(
    "envelope, item, code, words",
    [
        ("kserve", 42, 400, 'instances[0]: an instance must be a base64 string or a JSON object {"image"'),
        (
            "kserve",
            {"data": "abc"},
            400,
            'instances[0]: JSON request needs "image" (base64) or "neuron" (int)',
        ),
        (
            "kserve",
            {"image": "AAAA", "data": 1},
            400,
            "instances[0]: unknown option 'data'; known: image, concepts",
        ),
        ("kserve", {"image": "%%%"}, 400, "instances[0]: image is not valid base64"),
        ("kserve", {"image": b64(b"GIF89a" + b"\0" * 20)}, 400, "instances[0]: broken GIF file"),
        ("kserve", {"image": "AAAA", "top_k": "5"}, 400, "instances[0]: top_k must be an integer in 0..112"),
        ("kserve", "{not json", 400, "instances[0]: bad JSON: Expecting property name"),
        ("kserve", {"neuron": 3, "top_k": 1}, 400, 'instances[0]: "neuron" takes no other option'),
        (
            "kservev2",
            v2_input("px", [1.0, 2.0], "FP32"),
            400,
            "input 'px': datatype must be BYTES (the image as a base64 string), not string 'FP32'",
        ),
        (
            "kservev2",
            {"name": "x", "datatype": "BYTES", "data": [1, 2]},
            400,
            "input 'x': data must be a base64",
        ),
        (
            "kservev2",
            "just text",
            400,
            "inputs[0]: an input is an object (name, shape, datatype, data), not string",
        ),
        ("kservev2", {"name": "x", "datatype": "BYTES", "data": ""}, 400, "input 'x': image is empty"),
    ],
)
def test_a_bad_item_is_its_own_one_line_error(envelope, item, code, words, image):
    good = image if envelope == "kserve" else v2_input("good", image) | {"data": image}
    out = parse_envelope([good, item], LIMITS, envelope)
    assert isinstance(out[0], ExplainRequest), "the other items are still read"
    err = out[1]
    assert isinstance(err, RequestError) and err.code == code, err
    message = err.message.replace("instances[1]", "instances[0]").replace("inputs[1]", "inputs[0]")
    assert words in message and "\n" not in err.message, err.message


def test_junk_never_raises():
    rng = random.Random(0)
    atoms = [
        None,
        True,
        0,
        -1,
        1.5,
        "",
        "{",
        "[]",
        "AAAA",
        "data:image/png;base64,",
        [],
        {},
        {"image": None},
        {"image": 3},
        {"neuron": "x"},
        {"datatype": "BYTES"},
        {"datatype": "BYTES", "data": None},
    ]
    for _ in range(300):
        items = [rng.choice(atoms) for _ in range(rng.randint(0, 3))]
        for envelope in ("kserve", "kservev2"):
            out = parse_envelope(rng.choice([items, rng.choice(atoms)]), LIMITS, envelope)
            for r in out if isinstance(out, list) else [out]:
                assert isinstance(r, ExplainRequest | NeuronRequest | RequestError)
                if isinstance(r, RequestError):
                    assert 400 <= r.code < 500 and "\n" not in r.message


# ------------------------------------------------------------------------------------------ in-process


class EnvelopeContext(FakeContext):
    """FakeContext plus what TorchServe's envelopes read: request headers by name, request ids, version."""

    def __init__(self, base: FakeContext):
        self.__dict__.update(base.__dict__)
        self.manifest = {"model": {"modelName": "hint", "modelVersion": "0.1.0"}}

    def get_request_header(self, idx: int, key: str):
        return self.headers.get(idx, {}).get(key)

    def get_request_id(self, idx: int = 0) -> str:
        return f"req-{idx}"


@pytest.fixture
def wrapped(monkeypatch):
    """(context, envelope name -> the module entry point wrapped as TorchServe wraps it)."""
    h, ctx = shared_handler()
    monkeypatch.setattr(hint_handler, "_service", h)
    ectx = EnvelopeContext(ctx)
    classes = {"kserve": KServeEnvelope, "kservev2": KServev2Envelope}

    def run(envelope: str, body, headers: dict | None = None):
        ectx.reset({0: headers or {}})
        return classes[envelope](hint_handler.handle).handle([{"body": body}], ectx)

    return ectx, run


@pytest.fixture(scope="module")
def plain(image) -> dict:
    """The plain answer (POST /predictions/hint) to the JSON body the envelope tests send."""
    h, ctx = shared_handler()
    ctx.reset()
    return json.loads(h.handle([{"body": {"image": image, "top_k": 2}}], ctx)[0])


def test_v1_wraps_the_same_document(wrapped, image, plain):
    ctx, run = wrapped
    out = run("kserve", {"instances": [{"image": image, "top_k": 2}]})
    assert isinstance(out, list) and len(out) == 1 and list(out[0]) == ["predictions"]
    jsonschema.validate(out[0], schema_of("kserve_v1"))
    assert_same_answer(out[0]["predictions"][0], plain)
    assert 0 not in ctx.status and ctx.content_type[0] == "application/json"
    # the body as bytes (another Content-Type), and the explain route's key
    out = run(
        "kserve", json.dumps({"instances": [{"image": image, "top_k": 2}]}).encode(), {"explain": "True"}
    )
    assert list(out[0]) == ["explanations"] and out[0]["explanations"][0]["prediction"] == plain["prediction"]


def test_v1_errors_set_the_request_status(wrapped, image, plain):
    ctx, run = wrapped
    out = run("kserve", {"instances": [{"image": image, "top_k": 2}, {"image": image, "top_k": 999}]})
    docs = out[0]["predictions"]
    jsonschema.validate(out[0], schema_of("kserve_v1"))
    assert_same_answer(docs[0], plain)
    assert docs[1] == {
        "code": 400,
        "type": "BadRequest",
        "message": "instances[1]: top_k 999 out of range 0..320",
    }
    assert ctx.status[0] == (400, docs[1]["message"]), "the first failing item's status and one-line reason"
    out = run("kserve", {"inputs": []})
    assert out[0]["predictions"][0]["code"] == 400 and 'needs "instances"' in ctx.status[0][1]


def test_v2_outputs_hold_the_document_as_text(wrapped, image, plain):
    ctx, run = wrapped
    body = {
        "id": "r-1",
        "inputs": [v2_input("image", json.dumps({"image": image, "top_k": 2})), v2_input("bare", image)],
    }
    out = run("kservev2", body)
    assert len(out) == 1
    doc = json.loads(json.dumps(out[0]))  # shapes are tuples until TorchServe writes the JSON
    answers = v2_answers(doc)
    assert doc["id"] == "r-1" and doc["model_name"] == "hint" and doc["model_version"] == "0.1.0"
    assert [(o["name"], o["datatype"], o["shape"], len(o["data"])) for o in doc["outputs"]] == [
        ("image", "BYTES", [1], 1),
        ("bare", "BYTES", [1], 1),
    ]
    assert_same_answer(answers[0], plain)
    assert len(answers[1]["concepts"][0]["neurons"]) == 5, "default options"
    assert 0 not in ctx.status
    out = run("kservev2", {"inputs": [v2_input("pixels", 0.5, "FP32")]})
    err = json.loads(out[0]["outputs"][0]["data"][0])
    assert err["code"] == 400 and err["message"].startswith("input 'pixels': datatype must be BYTES")
    assert ctx.status[0] == (400, err["message"])


def test_other_envelopes_are_refused(wrapped, image):
    """service_envelope=json: each item gets 500 (the log says which envelope), never a wrong answer."""
    from ts.torch_handler.request_envelope.json import JSONEnvelope

    ctx, _ = wrapped
    ctx.reset()
    out = JSONEnvelope(hint_handler.handle).handle([{"body": {"instances": [{"image": image}]}}], ctx)
    err = json.loads(json.loads(out[0])["predictions"][0])
    assert err["code"] == 500 and "service_envelope 'json' is not supported" in err["message"]
    assert ctx.status[0][0] == 500


def test_plain_calls_are_not_enveloped(wrapped, image):
    """The entry point called by anything but an envelope answers rows, as before."""
    ctx, _ = wrapped
    ctx.reset()
    out = hint_handler.handle([{"image": image}], ctx)
    assert json.loads(out[0])["code"] == 400 and "part 'image' is text" in ctx.status[0][1]
    assert hint_handler.handle(None, ctx) is None


def test_schema_defines_the_envelopes():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert {"kserve_v1", "kserve_v2"} <= set(SCHEMA["$defs"])


# ------------------------------------------------------------------------------------------ TorchServe


@pytest.fixture(scope="module")
def batch1_store(tmp_path_factory):
    """hint.mar with batchSize 1 (make archive BATCH_SIZE=1): envelopes answer one request per batch."""
    store = tmp_path_factory.mktemp("store-batch1")
    bench.build_archives(store, which=("hint",), batch_size=1)
    return store


@pytest.fixture(scope="module", params=["kserve", "kservev2"])
def enveloped(request, batch1_store, tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("java not found: TorchServe 0.12 needs Java 17 (make apt-java)")
    work = tmp_path_factory.mktemp(f"ts-{request.param}")
    ts = bench.LocalTorchServe(work, batch1_store, ["hint"], props={"service_envelope": request.param})
    ts.start()
    try:
        yield request.param, ts
    finally:
        ts.stop()


def _post(ts, path: str, body: dict) -> requests.Response:
    return requests.post(f"{ts.inference_url}{path}", json=body, headers=ts.auth(), timeout=120)


@pytest.mark.slow
def test_torchserve_with_the_envelope(enveloped, image, plain):
    envelope, ts = enveloped
    if envelope == "kserve":
        body = {"instances": [{"image": image, "top_k": 2}]}
        for path, key in [
            ("/v1/models/hint:predict", "predictions"),
            ("/predictions/hint", "predictions"),
            ("/v1/models/hint:explain", "explanations"),
        ]:
            r = _post(ts, path, body)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
            doc = r.json()
            assert list(doc) == [key], path
            jsonschema.validate(doc, schema_of("kserve_v1"))
            assert_same_answer(doc[key][0], plain, where=path)
        r = _post(
            ts, "/v1/models/hint:predict", {"instances": [{"image": image, "top_k": 2}, {"image": "%"}]}
        )
        assert r.status_code == 400 and r.reason.startswith("instances[1]: image is not valid base64")
        docs = r.json()["predictions"]
        assert_same_answer(docs[0], plain)
        assert docs[1]["code"] == 400 and docs[1]["message"] == r.reason
        r = _post(ts, "/v1/models/hint:predict", {"image": image})
        assert r.status_code == 400 and r.json()["predictions"][0]["message"].startswith(
            'a KServe v1 request needs "instances"'
        )
        quick = {"instances": [{"image": image, "image_neurons": False}]}
        path = "/v1/models/hint:predict"
    else:
        body = {
            "id": "t-1",
            "inputs": [v2_input("image", json.dumps({"image": image, "top_k": 2})), v2_input("bare", image)],
        }
        for path in ("/v2/models/hint/infer", "/v2/models/hint/explain"):
            r = _post(ts, path, body)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
            doc = r.json()
            answers = v2_answers(doc)
            assert doc["id"] == "t-1" and doc["model_name"] == "hint"
            assert [o["name"] for o in doc["outputs"]] == ["image", "bare"]
            assert_same_answer(answers[0], plain, where=path)
            assert answers[1]["prediction"] == answers[0]["prediction"]
        r = _post(ts, "/v2/models/hint/infer", {"inputs": [v2_input("pixels", 0.5, "FP32")]})
        assert r.status_code == 400 and r.reason.startswith("input 'pixels': datatype must be BYTES")
        assert json.loads(r.json()["outputs"][0]["data"][0])["message"] == r.reason
        quick = {"inputs": [v2_input("image", json.dumps({"image": image, "image_neurons": False}))]}
        path = "/v2/models/hint/infer"
    # concurrent requests: batchSize 1 gives each its own batch (TorchServe's envelopes read only a
    # batch's first request: with batchSize 4 they would all get 503 "number of batch response mismatched")
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: _post(ts, path, quick).status_code, range(4)))
    assert codes == [200] * 4
