"""`--cpu-durations=N`: the N tests that used the most CPU time (a plugin
that `conftest.py` registers).

Wall-clock durations (`--durations`) mislead when the three backends' suites
share two cores: a test that waits for the cores looks slow. CPU time, the
test process's and that of the child processes it waited for (every
thread, user and system), is what a test costs the run, whatever else the
machine is doing. Each phase's CPU seconds travel with its report, so
xdist workers' tests are counted by the process that prints the summary.
"""

import resource

import pytest

_START = "_cpu_time_start"


def add_option(parser):
    """Adds `--cpu-durations` (from `conftest.py`'s `pytest_addoption`)."""
    parser.addoption(
        "--cpu-durations",
        type=int,
        default=None,
        metavar="N",
        help="show the N tests that used the most CPU time (0 for all), "
        "child processes included, and the sum over every test.",
    )


def _cpu_seconds():
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    setattr(item, _START, _cpu_seconds())
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    setattr(item, _START, _cpu_seconds())
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    setattr(item, _START, _cpu_seconds())
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    start = getattr(item, _START, None)
    if start is not None:
        item.user_properties.append(
            (f"cpu_{call.when}", _cpu_seconds() - start)
        )
    yield


def pytest_terminal_summary(terminalreporter, config):
    count = config.getoption("--cpu-durations")
    if count is None:
        return
    seconds = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            when = getattr(report, "when", None)
            for name, value in getattr(report, "user_properties", ()):
                if name == f"cpu_{when}":
                    seconds[report.nodeid] = (
                        seconds.get(report.nodeid, 0.0) + value
                    )
    ranked = sorted(seconds.items(), key=lambda item: -item[1])
    shown = ranked if count == 0 else ranked[:count]
    terminalreporter.write_sep(
        "=", f"most CPU time: {len(shown)} of {len(ranked)} tests"
    )
    for nodeid, value in shown:
        terminalreporter.write_line(f"{value:8.2f}s cpu  {nodeid}")
    terminalreporter.write_line(
        f"{sum(seconds.values()):8.2f}s cpu  in all {len(ranked)} tests "
        "(setup, call and teardown; collection and start-up not included)"
    )
