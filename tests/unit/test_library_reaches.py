"""keel's reaches into Hydra's and CPython's private names (keel.config.entry, "Library reaches").

Each test pins what a reach relies on, so that an upgrade that changes it fails here, by name,
instead of quietly bringing back Hydra's exit 1, its extra "Error executing job" line, a slow
``--help`` or a lost line of output.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import hydra
import hydra._internal.utils as hydra_utils
import pytest
from hydra.core.utils import JobReturn, JobStatus

from keel.config.entry import _hydra_main_arguments, _hydra_reaches, exit_now

ROOT = Path(__file__).resolve().parents[2]


def test_hydra_is_the_version_the_reaches_were_checked_against():
    # a new minor version: re-read the docstring of keel.config.entry._hydra_reaches (a public
    # hook may exist now), then widen this
    assert hydra.__version__.startswith("1.3."), hydra.__version__


# --- hydra._internal.utils.run_and_report ---------------------------------------------------


def test_run_and_report_takes_one_function_and_exits_1_after_printing(monkeypatch, capsys):
    from hydra.errors import ConfigCompositionException

    assert list(inspect.signature(hydra_utils.run_and_report).parameters) == ["func"]
    assert hydra_utils.run_and_report(lambda: 7) == 7
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def fail():
        raise ConfigCompositionException("no such thing")

    with pytest.raises(SystemExit) as info:
        hydra_utils.run_and_report(fail)
    assert info.value.code == 1  # what keel turns into 2
    assert capsys.readouterr().err.startswith("no such thing\n")


def test_hydra_main_calls_run_and_report_as_a_module_global():
    """keel replaces the module attribute: that only works while Hydra looks it up there."""
    hydra_main_module = sys.modules["hydra.main"]  # `import hydra.main` gives the function

    assert "_run_hydra(" in inspect.getsource(hydra.main)
    assert hydra_main_module._run_hydra is hydra_utils._run_hydra
    for step in (hydra_utils._run_hydra, hydra_utils._run_app):
        assert step.__globals__ is vars(hydra_utils)
        assert "run_and_report" in step.__code__.co_names, step.__name__


# --- hydra.core.utils.JobReturn.return_value --------------------------------------------------


def test_job_return_value_is_a_property_whose_getter_writes_a_line(capsys):
    """The line keel holds back; if Hydra stops writing it, keel's getter is not needed."""
    prop = inspect.getattr_static(JobReturn, "return_value")
    assert isinstance(prop, property) and prop.fget is not None and prop.fset is not None
    assert "_return_value" in {f.name for f in dataclasses.fields(JobReturn)}

    done = JobReturn(status=JobStatus.COMPLETED)
    done.return_value = 5
    assert done._return_value == 5 and done.return_value == 5

    failed = JobReturn(overrides=["a=1"], status=JobStatus.FAILED)
    failed.return_value = ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        _ = failed.return_value
    assert capsys.readouterr().err.strip() == "Error executing job with overrides: ['a=1']"


def test_the_reaches_are_undone_on_leaving_even_after_an_error():
    report, value = hydra_utils.run_and_report, inspect.getattr_static(JobReturn, "return_value")

    def mine(func):
        return func()

    with pytest.raises(RuntimeError), _hydra_reaches(mine, lambda job: "held") as hydra_report:
        assert hydra_report is report and hydra_utils.run_and_report is mine
        job = JobReturn(status=JobStatus.FAILED)
        job.return_value = 3  # Hydra's setter is kept
        assert job._return_value == 3 and job.return_value == "held"
        raise RuntimeError
    assert hydra_utils.run_and_report is report
    assert inspect.getattr_static(JobReturn, "return_value") is value


# --- hydra.main's closure -----------------------------------------------------------------------


def test_hydra_main_keeps_its_arguments_in_the_closure_keel_reads(tmp_path):
    def task(cfg):  # pragma: no cover - never called
        raise AssertionError

    main = hydra.main(version_base="1.3", config_path=str(tmp_path), config_name="app")(task)
    assert _hydra_main_arguments(main) == {"config_path": str(tmp_path), "config_name": "app", "task_function": task}
    assert main.__wrapped__ is task  # run_app's way to the task's code
    assert _hydra_main_arguments(task) is None and _hydra_main_arguments(print) is None


# --- the whole path: a tiny @hydra.main app ---------------------------------------------------

APP = """\
import hydra

from keel.config import ConfigError, run_app


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg):
    if cfg.a == 1:
        raise ConfigError(["a=1: expected a number > 1. Fix: a=2"])
    if cfg.a == 2:
        raise RuntimeError("boom")
    print("ran", cfg.a)


if __name__ == "__main__":
    run_app(main)
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    where = tmp_path_factory.mktemp("app")
    (where / "conf").mkdir()
    (where / "conf" / "app.yaml").write_text("a: 3\n")
    (where / "app.py").write_text(APP)
    return where


def _run(app: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "app.py", *args, "hydra/job_logging=none", "hydra/hydra_logging=none"],
                          cwd=app, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    "args,message",
    [
        (["a=1"], "a=1: expected a number > 1. Fix: a=2"),  # keel's error inside the job
        (["-m", "a=3,1"], "a=1: expected a number > 1. Fix: a=2"),  # ... read back by BasicSweeper
        (["b=3"], "b=3: no key 'b' in the config"),  # Hydra's composition error
    ],
    ids=["job", "multirun", "compose"],
)
def test_a_mistake_exits_2_with_one_message_and_nothing_of_hydras(app, args, message):
    proc = _run(app, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: invalid configuration (1 problem):\n  - {message}")
    assert proc.stderr.count("\n") == 2, proc.stderr  # that message alone
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr


def test_a_crash_keeps_hydras_report_and_exit_1(app):
    proc = _run(app, "a=2")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("Error executing job with overrides: [")  # held back, then released
    assert "RuntimeError: boom" in proc.stderr
    assert "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace." in proc.stderr


def test_a_finished_run_is_untouched(app):
    proc = _run(app)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "ran 3\n", "")


# --- the fast exit ------------------------------------------------------------------------------


def _python(code: str, **kwargs) -> subprocess.Popen:
    """``code`` in a fresh interpreter whose stdout is a block-buffered pipe, as under `| head`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def test_atexit_can_be_run_early_once():
    import atexit

    assert callable(atexit._run_exitfuncs)  # private CPython; exit_now runs the handlers with it


def test_exit_now_flushes_runs_atexit_once_and_exits_at_once():
    proc = _python("""
        import atexit, sys
        from keel.config.entry import exit_now
        atexit.register(print, "atexit ran")
        print("out")  # stdout is a pipe: block-buffered, still in the buffer
        print("err", file=sys.stderr, end="")
        exit_now(3)
        print("not reached")
    """)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out, err) == (3, "out\natexit ran\n", "err")


def test_exit_now_into_a_closed_pipe_keeps_its_status_quietly():
    """`keel predict ... | head -c1`: the reader left before the flush."""
    proc = _python("""
        import sys
        from keel.config.entry import exit_now
        print("rows " * 100)  # buffered: nothing reached the pipe yet
        sys.stderr.write("ready\\n"); sys.stderr.flush()
        sys.stdin.readline()  # the parent has closed its end of stdout
        exit_now(0)
    """, stdin=subprocess.PIPE)
    assert proc.stderr.readline() == "ready\n"
    proc.stdout.close()
    proc.stdin.write("go\n")
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    with proc.stderr:
        assert proc.stderr.read() == ""  # no BrokenPipeError, no "Exception ignored"


def test_exit_now_with_a_live_child_returns_for_the_normal_exit():
    proc = _python("""
        import subprocess, sys
        from keel.config.entry import exit_now
        child = subprocess.Popen(["sleep", "30"])
        exit_now(0)
        print("returned")
        child.kill(); child.wait()
        sys.exit(5)
    """)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (5, "returned\n"), err
