"""The terminal face: ``inglenook`` and its subcommands."""
