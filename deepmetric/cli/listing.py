"""``deepmetric list``: what can be named in a config."""

from __future__ import annotations

import argparse

KINDS = ("losses", "miners", "datasets", "backbones")


def registries() -> dict:
    from deepmetric import data, losses, miners, models

    return {
        "losses": losses.LOSSES,
        "miners": miners.MINERS,
        "datasets": data.DATASETS,
        "backbones": models.BACKBONES,
    }


def cmd_list(args: argparse.Namespace) -> None:
    found = registries()
    for kind in [args.kind] if args.kind else found:
        print(f"{kind}: {', '.join(found[kind].names())}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the registered losses, miners, datasets and backbones")
    p.add_argument("kind", nargs="?", choices=KINDS)
    p.set_defaults(func=cmd_list)
