"""XLA settings for JAX test processes (the suite's and its children's).

Tests build many tiny models and run each a few times, so XLA's compile
time is most of a JAX test run: these flags trade the speed of the compiled
code, which tests do not need, for compile time. Measured on the 2-core
machine: `ptuning_text_classifier_test.py` 76 s without them, 42.5 s with
`--xla_cpu_use_fusion_emitters=false` on top of the first two. Imports
nothing, so it can run before JAX starts.
"""

XLA_FLAGS = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    # XLA:CPU's newer fusion emitters compile far more slowly than the
    # classic elemental emitter at these sizes.
    "--xla_cpu_use_fusion_emitters=false",
)


def with_test_xla_flags(env):
    """`env` (a dict of environment variables) with `XLA_FLAGS` extended."""
    flags = env.get("XLA_FLAGS", "").split()
    flags += [flag for flag in XLA_FLAGS if flag not in flags]
    return dict(env, XLA_FLAGS=" ".join(flags))
