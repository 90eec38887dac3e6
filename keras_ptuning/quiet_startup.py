"""TensorFlow's start-up messages kept out of a user's terminal.

keras-hub loads TensorFlow (for its tokenizers) on every backend, and
TensorFlow's native libraries log as they load: "All log messages before
absl::InitializeLog() is called are written to STDERR", oneDNN and CUDA
notices, `cuInit` errors on machines without a GPU. They come from C++
before any Python logging is set up, so `import keras_ptuning` loads
TensorFlow first with the process's standard error (file descriptor 2)
pointed at `/dev/null`, and sets `TF_CPP_MIN_LOG_LEVEL=3` so that the
native messages TensorFlow logs later (`cuInit` at its first op) stay
quiet too.

Only where the user has not chosen: with `TF_CPP_MIN_LOG_LEVEL` already set
(to anything, `0` shows every message), or TensorFlow already imported,
nothing changes. An error raised by the import itself is raised as usual,
after standard error is restored. Importing this module does it, so
`keras_ptuning/__init__.py` imports it before anything that loads
TensorFlow.
"""

import contextlib
import os
import sys

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"


@contextlib.contextmanager
def _standard_error_silenced():
    """Points file descriptor 2 at `/dev/null` for the block."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        # No usable standard error (a closed or replaced stream).
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_tensorflow_startup():
    """Imports TensorFlow without its native start-up messages, unless the
    user set `TF_CPP_MIN_LOG_LEVEL` or TensorFlow is already loaded.

    Returns whether it did anything.
    """
    if LOG_LEVEL_VARIABLE in os.environ or "tensorflow" in sys.modules:
        return False
    os.environ[LOG_LEVEL_VARIABLE] = "3"
    with _standard_error_silenced():
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            # keras-hub reports a missing TensorFlow in its own words.
            pass
    return True


quiet_tensorflow_startup()
