"""Print (or write) the model card of a trained ROSS folder; publishing is `python -m ross.model_cards.publish`.

    python -m ross.model_cards --model runs/tiny/stage2/model [--repo-id ORG/NAME] [--eval PATH ...] [--out README.md]
"""

import argparse
import sys

from ross.model_cards.card import build_model_card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ross.model_cards", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the trained folder")
    parser.add_argument("--repo-id", help="ORG/NAME used in the usage snippet")
    parser.add_argument("--eval", action="append", metavar="PATH", help="scores.json or a folder of them (repeatable)")
    parser.add_argument("--base-model", action="append", help="Hub id of a base model (repeatable)")
    parser.add_argument("--license")
    parser.add_argument("--out", help="write the card here instead of printing it")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("repo_id", args.repo_id), ("base_model", args.base_model),
                                   ("license", args.license)) if v}  # fmt: skip
    card = build_model_card(args.model, eval_results=args.eval, **overrides)
    if args.out:
        card.save(args.out)
    else:
        sys.stdout.write(str(card))
    return 0


if __name__ == "__main__":
    sys.exit(main())
