"""How much of a bank-layer cell's effective receptive field a centred square of the input holds: the
choice of the exemplar window (hint.build.exemplars.WINDOW).

    python benchmarks/receptive_field.py [--data DIR] [--images 16] [--backbone efficientnet_lite0]

For ``--images`` build photos (every 1000/N-th of the sorted sample), the mean |∂z/∂x| of the centre cell's
activations (all channels) at the backbone's default layer, summed over the input's colour channels and the
images; prints the share of it inside a centred square of each side (pixels of the model's input).
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--backbone", default="efficientnet_lite0")
    args = p.parse_args(argv)
    from hint.backbones import get_backbone
    from hint.build.datasets import discover, load_rgb

    bb = get_backbone(args.backbone)
    found = discover(args.data).samples
    picked = found[:: max(1, len(found) // args.images)][: args.images]
    x = bb.preprocess([load_rgb(s.path) for s in picked]).requires_grad_(True)
    out = {}
    handle = bb.layer_module().register_forward_hook(lambda _m, _i, o: out.__setitem__("z", o))
    bb.model.eval()(x)
    handle.remove()
    z = out["z"]
    h, w = z.shape[2:]
    z[:, :, h // 2, w // 2].abs().sum().backward()
    g = x.grad.abs().sum((0, 1))
    g = g / g.sum()
    size, cell = x.shape[-1], x.shape[-1] / w
    print(f"{bb.name}:{bb.layer}, grid {h}x{w} (a cell = {cell:g} px of {size}), {len(picked)} images")
    print("| side (px) | cells | share of the centre cell's |dz/dx| |\n|---:|---:|---:|")
    centre = (w // 2 + 0.5) * cell
    for cells in (1, 2, 3, 4, 5, 6, 7):
        half = cells * cell / 2
        lo, hi = max(0, round(centre - half)), min(size, round(centre + half))
        print(f"| {hi - lo} | {cells} | {float(g[lo:hi, lo:hi].sum()):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
