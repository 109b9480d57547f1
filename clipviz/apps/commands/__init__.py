"""One module per subcommand, each with ``add_parser(subparsers)`` and ``run(args) -> int``."""

NAMES = ("info", "visualize", "examples", "concepts", "sweep", "atlas", "publish", "space", "demo")
