"""The offline CLI: build/report end to end, readable errors, and a 2-process gloo build via torchrun."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from support import REPO

from hint._utils.options import from_args
from hint.bank import ConceptBank
from hint.build.builder import pick_device
from hint.build.config import BuildConfig
from offline.__main__ import build_parser, main

ARGS = ["--concepts", "whole", "animal", "artifact", "--permutations", "16", "--workers", "0", "--no-progress",
        "--batch-size", "8"]  # fmt: skip


@pytest.fixture(scope="module")
def cli_bank(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "bank"
    assert main(["build", "--data", str(tiny_data), "--out", str(out), *ARGS]) == 0
    return out


def test_build_and_report(cli_bank, tmp_path, capsys):
    bank = ConceptBank.load(cli_bank)
    assert [c["name"] for c in bank.concepts] == ["whole", "animal", "artifact"]
    assert bank.meta["faithfulness"]["k"] == 20
    assert main(["report", str(cli_bank), "--out", str(tmp_path / "r")]) == 0
    names = {p.name for p in (tmp_path / "r").iterdir()}
    assert {
        "top_neurons.png",
        "association.png",
        "f1.md",
        "neurons.md",
        "faithfulness.md",
        "faithfulness.png",
    } <= names
    assert "| animal |" in (tmp_path / "r" / "f1.md").read_text()
    assert (tmp_path / "r" / "association.png").stat().st_size > 10_000


def test_l2_option_reaches_the_probes(cli_bank, tiny_data, tmp_path):
    """``--l2``: recorded in the manifest, and a stronger weight decay gives smaller probe weights."""
    out = tmp_path / "bank"
    argv = [
        "build",
        "--data",
        str(tiny_data),
        "--out",
        str(out),
        "--cache",
        str(cli_bank.parent / ".hint-cache"),
    ]
    assert main([*argv, *ARGS, "--l2", "0.1"]) == 0
    strong, default = ConceptBank.load(out), ConceptBank.load(cli_bank)
    assert strong.meta["build"]["l2"] == 0.1 and default.meta["build"]["l2"] == 1e-3
    assert strong.weight.norm(dim=1).sum() < default.weight.norm(dim=1).sum()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["build", "--data", "/nonexistent", "--out", "x"], "does not exist"),
        (["build", "--data", "{tiny}", "--out", "x", "--concepts", "nothing-like-this"], "unknown concept"),
        (["build", "--data", "{tiny}", "--out", "x", "--layer", "no.such.layer"], "unknown layer"),
        (["report", "/nonexistent"], "not a concept bank"),
        (["build", "--data", "{tiny}", "--out", "x", "--views", "0"], "views must be at least 1"),
        (["build", "--data", "{tiny}", "--out", "x", "--per-class", "0"], "per_class must be at least 1"),
    ],
)
def test_cli_errors_are_one_line(argv, message, tiny_data, capsys):
    argv = [a.replace("{tiny}", str(tiny_data)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


@pytest.mark.slow
def test_torchrun_two_gloo_processes_match_single(cli_bank, tiny_data, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    out = tmp_path / "bank"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "offline",
        "build",
        "--data",
        str(tiny_data),
        "--out",
        str(out),
        "--device",
        "cpu",
        *ARGS,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cache = tmp_path / ".hint-cache"
    assert not list(
        cache.glob("regions-*-part*of2.safetensors")
    )  # the ranks' checkpoints, merged and removed
    dist, single = ConceptBank.load(out), ConceptBank.load(cli_bank)
    # one step-1 table for the bank's layer and one per head layer (rank 0 fits the head alone)
    assert len(list(cache.glob("regions-*.safetensors"))) == 1 + len(dist.head.layers)
    for a, b in zip(dist.head.weight, single.head.weight, strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-2)
    assert dist.meta["build"]["step1"]["world_size"] == 2
    assert dist.meta["build"]["step1"]["images"] == single.meta["build"]["step1"]["images"] == 16
    torch.testing.assert_close(dist.phi, single.phi, atol=1e-4, rtol=1e-3)
    # the ranks' top patches, merged: the same exemplars as one process keeps
    assert dist.exemplars.images == single.exemplars.images and torch.equal(
        dist.exemplars.box, single.exemplars.box
    )
    torch.testing.assert_close(dist.exemplars.activation, single.exemplars.activation, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_shared_sample_rebuild_reproduces_committed_bank(shared, tmp_path):
    """The acceptance check: rebuilding the default bank from an empty cache gives the committed tables."""
    committed = ConceptBank.load(REPO / "model_store" / "hint-bank")
    out = tmp_path / "bank"
    argv = [
        "build",
        "--data",
        str(shared / "imagenet-sample"),
        "--out",
        str(out),
        "--cache",
        str(tmp_path / "c"),
        "--no-progress",
    ]
    assert main(argv) == 0
    rebuilt = ConceptBank.load(out)
    assert rebuilt.wnids == committed.wnids
    torch.testing.assert_close(rebuilt.weight, committed.weight, atol=1e-3, rtol=1e-2)
    torch.testing.assert_close(rebuilt.phi, committed.phi, atol=1e-3, rtol=1e-2)
    for a, b in zip(rebuilt.concepts, committed.concepts, strict=True):
        assert abs(a["f1"] - b["f1"]) < 0.02, (a["name"], a["f1"], b["f1"])
    # the localisation head (its box threshold is calibrated afterwards: offline head --calibrate-only)
    assert rebuilt.head.layers == committed.head.layers and rebuilt.head.negatives == committed.head.negatives
    for a, b in zip(rebuilt.head.weight, committed.head.weight, strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-2)
    # and the served presence rule
    rule, want = rebuilt.meta["presence"]["model"], committed.meta["presence"]["model"]
    assert rule["coef"] == pytest.approx(want["coef"], abs=1e-3) and rule["cut"] == pytest.approx(
        want["cut"], abs=0.06
    )


def test_presence_rule_and_head_commands_rewrite_a_bank(cli_bank, tiny_data, tmp_path, capsys):
    """offline presence-rule refits the build's rule from its data (the same rule), offline head refits the
    head (the same classifiers) and, with --calibrate, sets its box threshold from a box set's selection
    half; both keep the bank's tensors and other files."""
    from hint.head import LocalisationHead

    built = ConceptBank.load(cli_bank)
    out = tmp_path / "bank"
    assert (
        main(
            [
                "presence-rule",
                "--bank",
                str(cli_bank),
                "--out",
                str(out),
                "--data",
                str(tiny_data),
                "--cache",
                str(tmp_path / "c"),
                "--no-progress",
            ]
        )
        == 0
    )
    again = ConceptBank.load(out)
    assert again.sha256 == built.sha256
    rule, want = again.meta["presence"]["model"], built.meta["presence"]["model"]
    assert rule["coef"] == pytest.approx(want["coef"], abs=1e-4) and rule["cut"] == want["cut"]
    boxes = tmp_path / "boxes"
    (boxes / "images").mkdir(parents=True)
    rows = ["file,wnid,boxes_xyxy"]
    for i, p in enumerate(sorted(tiny_data.iterdir())[:4]):
        (boxes / "images" / f"{i}.png").write_bytes(p.read_bytes())
        rows.append(f"{i}.png,{p.name.split('_')[0]},5 5 60 60")
    (boxes / "annotations.csv").write_text("\n".join(rows) + "\n")
    assert (
        main(
            [
                "head",
                "--bank",
                str(out),
                "--layers",
                "_blocks.14",
                "--data",
                str(tiny_data),
                "--cache",
                str(tmp_path / "c"),
                "--calibrate",
                str(boxes),
                "--no-progress",
            ]
        )
        == 0
    )
    head: LocalisationHead = ConceptBank.load(out).head
    assert head.layers == ["_blocks.14"] and head.grid == [7, 7] and head.weight[0].shape == (3, 192)
    torch.testing.assert_close(
        head.weight[0], built.head.weight[built.head.layers.index("_blocks.14")], atol=1e-3, rtol=1e-2
    )
    cal = head.info["calibration"]
    assert cal["images"] == 2 and 0 <= head.box_threshold < 1 and cal["data"] == str(boxes)
    assert f"box threshold {head.box_threshold}" in capsys.readouterr().out


def test_build_flags_are_the_build_config_fields():
    """``offline build`` has one flag per BuildConfig field (but ``amp``, which follows ``--device``) with the
    field's default, type, choices and help; ``--device`` defaults to auto."""
    parser, _ = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["build"]
    actions = {a.dest: a for a in sub._actions}
    for f in fields(BuildConfig):
        if f.name == "amp":
            assert f.name not in actions
            continue
        a = actions[f.name]
        assert a.option_strings == ["--" + f.name.replace("_", "-")]
        assert a.default == ("auto" if f.name == "device" else f.default), f.name
        assert a.help == f.metadata["help"] and a.choices == f.metadata["choices"]
        assert a.type is (None if isinstance(f.default, str) else type(f.default))
    args = parser.parse_args(["build", "--data", "d", "--out", "o", "--device", "cuda", "--top-k", "5"])
    assert from_args(BuildConfig, args, amp=args.device == "cuda") == BuildConfig(
        device="cuda", amp=True, top_k=5
    )


def test_cli_bank_manifest_gives_back_the_flags(cli_bank):
    """A bank built by the CLI records the flags' settings: read back, they are the config it ran with."""
    device = pick_device("auto")
    want = BuildConfig(permutations=16, workers=0, batch_size=8, device=device, amp=device == "cuda")
    assert BuildConfig.from_manifest(ConceptBank.load(cli_bank)) == want


def test_exemplars_command_adds_them_to_a_bank_and_keeps_its_files(cli_bank, tiny_data, tmp_path, capsys):
    """offline exemplars on a bank without them: the build's exemplars, the bank's other files byte for byte."""
    import json

    from hint.exemplars import FILE

    built = ConceptBank.load(cli_bank)
    old = tmp_path / "old"
    built.exemplars, want = None, built.exemplars
    built.save(old)
    (old / "MODEL_CARD.md").write_text("kept\n")
    before = json.loads((old / "manifest.json").read_text())["files"]
    assert FILE not in before
    assert (
        main(
            [
                "exemplars",
                "--bank",
                str(old),
                "--data",
                str(tiny_data),
                "--cache",
                str(tmp_path / "c"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "labels:" in capsys.readouterr().out
    files = json.loads((old / "manifest.json").read_text())["files"]
    assert {k: files[k] for k in before} == before and FILE in files
    assert (old / "MODEL_CARD.md").read_text() == "kept\n"
    got = ConceptBank.load(old).exemplars
    assert (
        got.images == want.images
        and torch.equal(got.box, want.box)
        and torch.equal(got.concept, want.concept)
    )
    torch.testing.assert_close(got.activation, want.activation, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(got.iou, want.iou, atol=1e-3, rtol=1e-3)
    assert main(["exemplars", "--bank", str(old), "--k", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --k must be at least 1, not 0"
