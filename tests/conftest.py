import os

from tests.jax_settings import with_test_xla_flags

if os.environ.get("KERAS_BACKEND") == "jax":
    # Set before JAX starts; child processes inherit them.
    os.environ.update(with_test_xla_flags(os.environ))

import keras  # noqa: E402
import pytest  # noqa: E402

from tests import cpu_time  # noqa: E402
from tests.support import ONE_BACKEND_REASON  # noqa: E402
from tests.support import run_models_eagerly  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


# On TensorFlow, tests run their models eagerly: tracing a `tf.function` for
# every tiny model built costs more than the steps it runs (measured: 93 s
# eager vs 267 s traced for the causal-LM and saving tests). Tests marked
# `compiled` keep the traced functions users get, and
# KERAS_PTUNING_TEST_COMPILED=1 traces them all. JAX stays compiled (its
# eager mode compiles every op instead, which is slower) with a session-wide
# compilation cache, and PyTorch runs eagerly anyway.
@pytest.fixture(autouse=True)
def _eager_unless_compiled(request, monkeypatch):
    if (
        keras.config.backend() != "tensorflow"
        or request.node.get_closest_marker("compiled")
        or os.environ.get("KERAS_PTUNING_TEST_COMPILED")
    ):
        return
    run_models_eagerly(monkeypatch)


@pytest.fixture(params=["one_segment", "segments"])
def cache_segments(request, monkeypatch):
    """Cached generation in one cache segment, or in several short ones.

    The default first segment has 32 real slots; the tests' sequences are
    shorter, so "segments" shrinks it to 1 and the growth to 2 slots.
    """
    from keras_ptuning.backbones import cached_decoding

    if request.param == "one_segment":
        monkeypatch.setattr(cached_decoding, "FIRST_SEGMENT_LENGTH", None)
    else:
        monkeypatch.setattr(cached_decoding, "FIRST_SEGMENT_LENGTH", 1)
        monkeypatch.setattr(cached_decoding, "MIN_SEGMENT_GROWTH", 2)
    return request.param


def pytest_addoption(parser):
    parser.addoption(
        "--fail-on-unexpected-skips",
        action="store_true",
        help="fail the run if a test skips for any reason but running on "
        "one backend only (a missing PEFT, transformers or MiniLM fails).",
    )
    cpu_time.add_option(parser)


def pytest_sessionfinish(session, exitstatus):
    if not session.config.getoption("--fail-on-unexpected-skips"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    unexpected = []
    for report in reporter.stats.get("skipped", []) if reporter else []:
        reason = str(report.longrepr[-1] if report.longrepr else "")
        if ONE_BACKEND_REASON not in reason:
            unexpected.append(f"{report.nodeid}: {reason}")
    if unexpected:
        reporter.write_line(
            "Unexpected skips (each hides a claim):\n  "
            + "\n  ".join(unexpected),
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config):
    config.pluginmanager.register(cpu_time, "cpu_time")
    if keras.config.backend() == "jax":
        # Tests build many models of the same few shapes: XLA compiles each
        # program once per run (keyed by its HLO), not once per model. The
        # cache is shared by the xdist workers of one run and by the JAX
        # child processes they start (examples, the chain's JAX link).
        import tempfile

        import jax

        # The run's first process makes the cache; its xdist workers and
        # their child processes inherit the variable.
        cache = os.environ.get("KERAS_PTUNING_JAX_CACHE")
        if cache is None:
            cache = tempfile.mkdtemp(prefix="keras-ptuning-jax-cache-")
            os.environ["KERAS_PTUNING_JAX_CACHE"] = cache
            config._jax_cache_owned = cache
        settings = {
            "jax_compilation_cache_dir": cache,
            "jax_persistent_cache_min_compile_time_secs": 0,
            "jax_persistent_cache_min_entry_size_bytes": -1,
        }
        for name, value in settings.items():
            jax.config.update(name, value)
            os.environ[name.upper()] = str(value)


def pytest_unconfigure(config):
    # The process that made the cache removes it.
    cache = getattr(config, "_jax_cache_owned", None)
    if cache:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)


def pytest_report_header(config):
    return f"keras backend: {keras.config.backend()}"
