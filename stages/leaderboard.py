"""Stage `leaderboard`: every model dvc.yaml trains, and the majority-class baseline, in one
table, best test macro F1 first (`reports/leaderboard.md`)."""

from __future__ import annotations

from pathlib import Path

from rarespecies.config import paths
from rarespecies.config.plan import declared
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.modeling.leaderboard import leaderboard, write_leaderboard


def work() -> str:
    """Rank the models of dvc.yaml's `vars.trained`."""
    table = leaderboard(sorted(declared()["trained"]), Path("."), paths.SPLIT_TABLE)
    write_leaderboard(table, paths.LEADERBOARD)
    top = table.iloc[0]
    return f"{len(table) - 1} models; best {top['model']} (test macro F1 {top['macro F1']:.4f})"


def main(debug: Debug = False) -> None:
    """Write the leaderboard."""
    run_stage("leaderboard", work, debug)


if __name__ == "__main__":
    run_command(main)
