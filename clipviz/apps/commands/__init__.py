"""One module per subcommand, each with ``add_parser(subparsers)`` and ``run(args) -> int``."""

NAMES = ("info", "visualize", "examples", "concepts", "sweep", "analyze", "atlas", "publish", "space", "demo")
