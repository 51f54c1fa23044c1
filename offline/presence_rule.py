"""``python -m offline presence-rule``: fit the served ``present`` rule of an existing bank.

New builds fit it themselves (:func:`hint.build.pipeline.presence_rule`); this recomputes what the build had for
an existing bank — its step-1 table (cached), the probes' out-of-fold image scores (the build's
cross-validation) and the model's summed softmax on the build photos — fits the rule and rewrites the
bank (in place, or to ``--out``), atomically. No evaluation image is used.
"""

from __future__ import annotations

import argparse

from offline._bank_args import add_bank_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "presence-rule", help="fit the served presence rule of an existing bank on its build data"
    )
    add_bank_arguments(p)


def run(args: argparse.Namespace) -> int:
    from hint.backbones import get_backbone
    from hint.bank import ConceptBank
    from hint.build.head import build_config, build_samples
    from hint.build.pipeline import PRESENCE_RULE, cached_regions, out_of_fold_scores, presence_rule

    bank = ConceptBank.load(args.bank)
    progress = not args.no_progress
    h = bank.load_hierarchy()
    samples = build_samples(bank, args.bank, args.data)
    cfg = build_config(bank, args.batch_size)
    bb = get_backbone(bank.meta["backbone"], bank.meta["layer"], args.weights)
    table, _, _ = cached_regions(bb, samples, cfg, args.cache or args.bank.parent / ".hint-cache", progress)
    scores = out_of_fold_scores(table, bank.wnids, h, cfg, progress)
    rule = presence_rule(bb, samples, table, scores, bank.wnids, h, args.batch_size, progress)
    bank.meta.setdefault("presence", {}).update(rule=PRESENCE_RULE, model=rule)
    out = bank.save(args.out or args.bank)
    print(
        f"wrote {out}: present = {rule['coef'][0]:.3f}·logit p + {rule['coef'][1]:.3f}·logit s "
        f"+ {rule['intercept']:.3f} >= {rule['cut']:.3f}; on the {rule['images']} build photos {rule['fit_quality']} "
        f"(softmax alone {rule['softmax_quality']})"
    )
    return 0
