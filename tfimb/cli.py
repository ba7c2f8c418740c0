"""The `tfimb` command line. Subcommands import TensorFlow only when they need it."""

import argparse
import sys

import tfimb
from tfimb import catalog


def _losses(args):
    del args
    print(catalog.format_table())
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tfimb",
        description="Class-imbalance losses and RealNVP density models for TensorFlow/Keras.")
    parser.add_argument("--version", action="version", version=f"tfimb {tfimb.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    losses = commands.add_parser("losses", help="list the losses with their formulas")
    losses.set_defaults(handler=_losses)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
