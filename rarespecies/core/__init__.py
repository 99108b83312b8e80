"""Layer 0, standard library and typer only: atomic files, the command-line convention, DVC."""
