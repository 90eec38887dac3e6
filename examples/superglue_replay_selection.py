"""Replays every selection criterion on SuperGLUE runs that scored val after
every epoch (`superglue_ptuning.py --val-history`): what each criterion's
pick scores on val, seed means per (run directory, task, system).

The picks use dev32's recorded accuracy and loss only, through the
example's own `pick_epoch`; val is what they are scored on, never an
input. Usage:

    python examples/superglue_replay_selection.py runs/*/results.json
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from superglue_ptuning import SELECTION_CRITERIA  # noqa: E402
from superglue_ptuning import TRAINED  # noqa: E402
from superglue_ptuning import pick_epoch  # noqa: E402


def replayed(paths):
    """`{(directory, task, system): {column: [val accuracy per seed]}}` for
    the runs with a val history and a loss history; the columns are the
    untrained start, each criterion's pick and the best val epoch."""
    groups = {}
    for path in paths:
        with open(path) as f:
            results = json.load(f)
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
        for task, systems in results.get("runs", {}).items():
            # Only trained systems pick an epoch.
            for system in TRAINED:
                for run in systems.get(system, {}).values():
                    if not (
                        run.get("val_history")
                        and run.get("select_loss_history")
                    ):
                        continue
                    val = run["val_history"]
                    columns = groups.setdefault((name, task, system), {})
                    columns.setdefault("start", []).append(val[0])
                    for criterion in SELECTION_CRITERIA:
                        epoch = pick_epoch(
                            criterion,
                            run["select_history"],
                            run["select_loss_history"],
                        )
                        columns.setdefault(criterion, []).append(val[epoch])
                    columns.setdefault("best val epoch", []).append(max(val))
    return groups


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results.json files")
    groups = replayed(parser.parse_args(argv).results)
    if not groups:
        print("no runs with --val-history")
        return
    columns = ["start", *SELECTION_CRITERIA, "best val epoch"]
    print("| runs (seeds) | " + " | ".join(columns) + " |")
    print("| --- " * (len(columns) + 1) + "|")
    every = {column: [] for column in columns}
    for (name, task, system), values in groups.items():
        seeds = len(values["start"])
        cells = [f"{np.mean(values[c]):.3f}" for c in columns]
        print(
            f"| {name} {task} {system} ({seeds}) | " + " | ".join(cells) + " |"
        )
        for column in columns:
            every[column] += values[column]
    cells = [f"{np.mean(every[c]):.3f}" for c in columns]
    print(f"| all ({len(every['start'])}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
