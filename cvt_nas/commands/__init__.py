"""Subcommands of `cvt-nas`: each module has ``add_parser(subparsers)``; parsers set ``func``."""
