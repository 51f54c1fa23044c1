"""BuildConfig: its settings read back from a bank manifest, and the flags made from its fields."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields
from types import SimpleNamespace

import pytest
from support import REPO

from hint._utils.options import add_arguments, from_args
from hint.build.config import BuildConfig
from hint.build.head import build_config


def test_old_manifest_gets_the_defaults_and_what_older_builds_did():
    """A manifest without some settings: those take the dataclass defaults, except ``per_class``, which
    banks built before the step-1 reservoirs did not bound (every image kept), and ``folds``, 0 for banks
    built before the cross-validation; other entries are ignored."""
    manifest = {
        "build": {"method": "gradient", "l2": 0.05, "seed": 3, "n_images": 10, "step1": {"images": 10}}
    }
    cfg = BuildConfig.from_manifest(manifest)
    assert (cfg.method, cfg.l2, cfg.seed) == ("gradient", 0.05, 3)
    assert cfg.per_class == 1_000_000 and cfg.folds == 0 and cfg.exemplars == 0
    assert build_config(manifest_bank(manifest)).folds == BuildConfig.folds  # rerun: cross-validated
    want = asdict(BuildConfig())
    got = asdict(cfg)
    assert {
        k: v for k, v in got.items() if k not in ("method", "l2", "seed", "per_class", "folds", "exemplars")
    } == {
        k: v for k, v in want.items() if k not in ("method", "l2", "seed", "per_class", "folds", "exemplars")
    }
    assert BuildConfig.from_manifest({}) == BuildConfig(per_class=1_000_000, folds=0, exemplars=0)


def manifest_bank(manifest: dict) -> SimpleNamespace:
    """What from_manifest and build_config read of a ConceptBank: its manifest as ``meta``."""
    return SimpleNamespace(meta=manifest)


def test_from_manifest_reads_a_bank_and_applies_changes():
    recorded = asdict(BuildConfig(method="smoothgrad", per_class=3, device="cuda", amp=True, folds=4))
    bank = manifest_bank({"build": {**recorded, "wall_s": 1.0}})
    assert BuildConfig.from_manifest(bank) == BuildConfig(**recorded)
    assert BuildConfig.from_manifest(bank, seed=7).seed == 7
    # rerunning a bank's steps here: its settings, on the CPU, this run's batch size
    here = build_config(bank, batch_size=5)
    assert here == BuildConfig(**{**recorded, "device": "cpu", "amp": False, "batch_size": 5})
    with pytest.raises(TypeError):
        BuildConfig.from_manifest(bank, no_such_field=1)


def test_add_arguments_makes_one_flag_per_field():
    p = argparse.ArgumentParser()
    add_arguments(BuildConfig, p, defaults={"workers": 0})
    assert from_args(BuildConfig, p.parse_args([])) == BuildConfig(workers=0)
    args = p.parse_args(
        ["--per-class", "3", "--l2", "0.5", "--method", "gradient", "--amp", "--baseline", "zero"]
    )
    cfg = from_args(BuildConfig, args, seed=9)
    assert (cfg.per_class, cfg.l2, cfg.method, cfg.amp, cfg.baseline, cfg.seed) == (
        3,
        0.5,
        "gradient",
        True,
        "zero",
        9,
    )
    assert type(cfg.l2) is float and type(cfg.per_class) is int
    with pytest.raises(SystemExit):
        p.parse_args(["--baseline", "median"])
    flags = {a.dest for a in p._actions} - {"help"}
    assert flags == {f.name for f in fields(BuildConfig)}
    q = argparse.ArgumentParser()
    add_arguments(BuildConfig, q, exclude={"amp", "device"})
    assert not hasattr(q.parse_args([]), "amp") and from_args(BuildConfig, q.parse_args([])) == BuildConfig()


def test_the_committed_bank_predates_the_reservoirs():
    """The default bank's manifest has no ``per_class``: its step 1 kept every image."""
    manifest = json.loads((REPO / "model_store" / "hint-bank" / "manifest.json").read_text())
    assert "per_class" not in manifest["build"]
    cfg = BuildConfig.from_manifest(manifest)
    assert cfg.per_class == 1_000_000 and cfg.method == manifest["build"]["method"] == "guided"
