"""Subcommands of the `sympformer` command line, one module each."""
