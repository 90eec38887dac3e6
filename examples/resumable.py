"""Resuming an example's `results.json` with runs made the same way only."""

import json
import os


def load_results(path, settings, restart=False):
    """The results an earlier run saved at `path`, to resume, or `None`.

    Args:
        path: the `results.json` an earlier run wrote; it need not exist.
        settings: dict, every argument the saved numbers depend on, by
            name. The caller saves it as the results' `"settings"`.
        restart: bool. If `True`, start anew even where `path` exists.

    Returns:
        The saved results, or `None` where there are none or `restart`.

    Raises:
        ValueError: the saved runs were made with another value of one of
            `settings`: resuming would average runs made differently.
    """
    if restart or not os.path.exists(path):
        return None
    with open(path) as f:
        results = json.load(f)
    saved = results.get("settings", {})
    for name, value in settings.items():
        if name in saved and saved[name] != value:
            raise ValueError(
                f"{path} holds runs made with {name}={saved[name]!r}, not "
                f"{value!r}: pass --restart to replace them, or another "
                "--output-dir"
            )
    return results
