"""`import keras_ptuning` keeps TensorFlow's native start-up messages out
of the terminal, unless the user chose a log level."""

import os
import subprocess
import sys

from keras_ptuning import quiet_startup
from tests.support import run_on_one_backend

# What TensorFlow printed before anything of ours on a machine without a
# GPU (the first two at load, the third at the first op).
NOISE = ("absl::InitializeLog", "cudart_stub", "cuInit")

SCRIPT = (
    "import keras_ptuning, keras_hub\n"
    "tokenizer = keras_hub.tokenizers.WordPieceTokenizer(\n"
    "    vocabulary=['[PAD]', '[UNK]', 'a'])\n"
    "print(tokenizer(['a']))\n"
)


@run_on_one_backend(
    "tensorflow", "TensorFlow loads the same way on every backend"
)
def test_importing_the_library_prints_no_tensorflow_start_up_noise():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "[[2]]" in result.stdout
    for noise in NOISE:
        assert noise not in result.stderr, result.stderr


def test_a_log_level_the_user_set_is_left_alone(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    # As if TensorFlow were not loaded yet: only the user's level stops it.
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    assert quiet_startup.quiet_tensorflow_startup() is False
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
