"""Run a ``@hydra.main`` app so that every config mistake exits 2 with one readable message.

keel's own checks (:func:`keel.config.validate_config`) exit 2 with a message that names the
key, the value, what is allowed and the fix. Mistakes Hydra catches itself while composing
(an unknown key, an unknown group option, an experiment that does not exist, an override it
cannot parse) are reported by Hydra's error reporter, which prints Hydra's text and exits 1.
:func:`run_app` puts a translating reporter in its place for the length of the call: Hydra's
config errors and keel's errors become one ``error:`` message and exit 2; anything else (a
crash while training) goes to Hydra's reporter unchanged, traceback included.
``HYDRA_FULL_ERROR=1`` keeps Hydra's full reports. :func:`exit_now` is keel's one fast exit
after a finished command.

Every reach into Hydra's (and CPython's) private names is in the section "Library reaches"
below, each with its reason and the public alternative checked;
tests/unit/test_library_reaches.py fails when one of them changes underneath.

Light on purpose: hydra, omegaconf and the standard library only.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import CodeType, TracebackType
from typing import Any, NoReturn

from omegaconf import DictConfig

from keel.config.validate import ConfigError
from keel.errors import KeelError
from keel.fast_exit import exit_now  # noqa: F401 - keel's one fast exit, re-exported for train.py/export.py

GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def run_app(main: Callable[[], Any], argv: Sequence[str] | None = None) -> Any:
    """Call ``main`` (a ``@hydra.main`` function) with keel's error reporting (see module doc).

    Args:
        main: the decorated task; called without arguments, so Hydra parses ``sys.argv``.
        argv: the command-line overrides, for naming them in messages (default ``sys.argv[1:]``).

    Raises:
        SystemExit: 2 after a user's mistake (one ``error:`` line block on stderr); Hydra's own
            exit status otherwise.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    text = fast_help(main, args)
    if text is not None:
        print(text, flush=True)
        return None

    script = Path(sys.argv[0]).name or "train.py"
    task = getattr(getattr(main, "__wrapped__", None), "__code__", None)  # set by functools.wraps
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    held = _HeldJobError()

    def report(func: Callable[[], Any]) -> Any:
        try:
            return func()
        except Exception as e:
            if full_error:
                held.release()
                raise
            message = user_error_message(e, args, script, task)
            if message is None:
                held.release()
                return hydra_report(_raising(e))  # bound by the `with` below, before any call
            _exit_with_message(message)

    with _hydra_reaches(report, held.value) as hydra_report:
        try:
            return main()
        except Exception as e:
            # Hydra composes the config for --help outside its reporter: a mistake there (an
            # unknown group option, a bad override) leaves main() as an exception
            if not any(a in ("--help", "-h", "--hydra-help") for a in args) or full_error:
                raise
            message = user_error_message(e, args, script, task)
            if message is None:
                raise
            _exit_with_message(message)


def _exit_with_message(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _raising(e: BaseException) -> Callable[[], Any]:
    def again() -> Any:
        raise e

    return again


HELP_ARGS = (["--help"], ["-h"])
# placeholders of a Hydra help template that need Hydra's own composition to fill
_COMPOSED_PLACEHOLDERS = ("$FLAGS_HELP", "$HYDRA_CONFIG_GROUPS", "$CONFIG", "${FLAGS_HELP}",
                          "${HYDRA_CONFIG_GROUPS}", "${CONFIG}")


def fast_help(main: Callable[[], Any], args: Sequence[str]) -> str | None:
    """The text ``--help`` prints, without Hydra's composition, or None to let Hydra print it.

    Hydra's ``--help`` composes the whole config and then lists the config groups by building
    a fresh config repository (a deep copy of every loaded config) per group: ~0.8-1.3 s of the
    command on this machine, for a template that here only needs the group listing. For a
    plain ``--help``/``-h`` whose template uses nothing but ``$APP_CONFIG_GROUPS`` and its own
    ``hydra.help`` keys (those of the ``hydra`` option the primary config picks, following that
    option's defaults list: conf/hydra/export.yaml builds on default.yaml), this renders the same
    text from the config directory: every folder under it holding ``*.yaml`` files is a group
    (except ``hydra``), its options the file stems, as Hydra lists a file-based config directory.
    tests/unit/test_entry_help.py compares the two. Anything else (overrides after ``--help``, a
    template showing the config or Hydra's flags, a config layout this does not read) goes to Hydra.
    """
    if list(args) not in HELP_ARGS:
        return None
    arguments = _hydra_main_arguments(main)
    if arguments is None:
        return None
    try:
        config_path, config_name, task = arguments["config_path"], arguments["config_name"], arguments["task_function"]
        if not (isinstance(config_path, str) and isinstance(config_name, str)) or "://" in config_path:
            return None
        import inspect

        from omegaconf import OmegaConf

        conf = (Path(inspect.getfile(task)).resolve().parent / config_path).resolve()
        primary = OmegaConf.load(conf / f"{config_name}.yaml")
        choices = [d for d in primary.get("defaults", []) if isinstance(d, DictConfig) and "hydra" in d]
        if len(choices) != 1 or not isinstance(choices[0]["hydra"], str) or "hydra" in primary:
            return None
        local = conf / "local"
        if local.is_dir() and any("hydra" in (OmegaConf.load(f) or {}) for f in local.glob("*.yaml")):
            return None
        help_node = _hydra_help_node(conf / "hydra", str(choices[0]["hydra"]), ())
        if help_node is None:
            return None
        help_cfg = OmegaConf.create({"hydra": {"help": help_node}}).hydra.help
        template = str(help_cfg.template)
    except Exception:  # anything unexpected: Hydra's own --help
        return None
    if any(p in template for p in _COMPOSED_PLACEHOLDERS):
        return None
    groups = sorted(
        d.relative_to(conf).as_posix()
        for d in conf.rglob("*")
        if d.is_dir() and any(d.glob("*.yaml")) and d.relative_to(conf).parts[0] != "hydra"
    )
    listing = "".join(f"{g}: {', '.join(sorted(f.stem for f in (conf / g).glob('*.yaml')))}\n" for g in groups)
    import string

    try:
        return string.Template(template).substitute(APP_CONFIG_GROUPS=listing)
    except (KeyError, ValueError):
        return None


def _hydra_help_node(folder: Path, name: str, seen: tuple[str, ...]) -> Any:
    """The ``help`` node of ``folder/<name>.yaml`` (a config of the ``hydra`` group), merged as
    Hydra merges it: its defaults list may name other configs of the same group (plain names,
    e.g. ``- default``, and ``_self_``; without ``_self_`` the file comes last); choices of other
    subgroups (``override job_logging: keel``) are skipped. None for anything else in that list
    (``override help: x``, a cycle): Hydra renders it."""
    from omegaconf import ListConfig, OmegaConf

    if name in seen or not (folder / f"{name}.yaml").is_file():
        return None
    cfg = OmegaConf.load(folder / f"{name}.yaml")
    defaults = cfg.pop("defaults", [])
    if not isinstance(defaults, (list, ListConfig)):
        return None
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]
    merged = OmegaConf.create({})
    for entry in defaults:
        if not isinstance(entry, str):
            # a subgroup choice other than help (``override job_logging: keel``) adds nothing to
            # the help node; a help subgroup (``override help: x``) is Hydra's to render
            keys = list(entry) if hasattr(entry, "keys") else []
            group = str(keys[0]).removeprefix("override ").removeprefix("optional ").strip() if len(keys) == 1 else ""
            if group and group != "help" and not group.startswith("help/"):
                continue
            return None
        if entry == "_self_":
            node = cfg.get("help", {})
        else:
            node = _hydra_help_node(folder, entry, (*seen, name))
            if node is None:
                return None
        merged = OmegaConf.merge(merged, node)
    return merged


# --- Library reaches ------------------------------------------------------------------------
# Every private name of Hydra and CPython that keel touches, each for a user-visible behaviour
# (one message and exit 2 for a config mistake; `--help` in 0.1 s; a fast exit). Checked
# against hydra-core 1.3.8; tests/unit/test_library_reaches.py fails when one changes.


@contextmanager
def _hydra_reaches(
    report: Callable[[Callable[[], Any]], Any], job_value: Callable[[Any], Any]
) -> Iterator[Callable[[Callable[[], Any]], Any]]:
    """For the ``with`` block, ``report`` is Hydra's error reporter and ``job_value`` the getter
    of ``JobReturn.return_value``; yields Hydra's own reporter. Both are restored on leaving.

    Private names touched:

    - ``hydra._internal.utils.run_and_report(func)``: ``hydra.main`` -> ``_run_hydra`` and
      ``_run_app`` call it, looked up as a module global each time, around every step
      (``--config-dir``, creating Hydra, ``hydra.run``/``multirun``, ``--cfg``, shell
      completion). On an exception it prints Hydra's text (or a trimmed traceback) and calls
      ``sys.exit(1)``, so the exception never leaves ``main()``.
    - ``hydra.core.utils.JobReturn.return_value``, a property: ``Hydra.run`` and
      ``BasicSweeper.sweep`` read it to re-raise a failed job's exception, and its getter first
      writes "Error executing job with overrides: [...]" to stderr: a second message beside
      keel's. ``job_value`` holds that line back (:class:`_HeldJobError`); the setter stays
      Hydra's. ``JobReturn._return_value`` is the field the getter reads.

    Public alternatives checked (hydra-core 1.3.8 source, docs and issues), none giving the
    same behaviour:

    - ``hydra.experimental.callback.Callback.on_job_end(config, job_return)``: sees a job's
      ``JobReturn``, but composition mistakes are raised before any job exists; it must be
      listed under ``hydra.callbacks`` in every app's config; its exceptions become warnings
      (``hydra._internal.callbacks.Callbacks._notify``), so the "Error executing job" line
      could only be stopped by exiting inside the callback (inside a launcher's worker for -m).
    - ``HYDRA_FULL_ERROR=1``: lets the exception leave ``main()``, but it is process
      environment (inherited by the DDP re-launch of ``sys.argv`` and every child process,
      where it would read as the user's choice), the "Error executing job" line is still
      written, and any other error would end in a full traceback instead of Hydra's trimmed
      one, which only ``run_and_report`` renders. Hydra 1.3 has no config key or API for its
      reporter (facebookresearch/hydra#2923 asks for HYDRA_FULL_ERROR as config).
    """
    import hydra._internal.utils as hydra_utils
    from hydra.core.utils import JobReturn

    hydra_report = hydra_utils.run_and_report
    hydra_value = JobReturn.return_value  # the property object (read on the class)
    hydra_utils.run_and_report = report
    JobReturn.return_value = property(job_value, hydra_value.fset)
    try:
        yield hydra_report
    finally:
        hydra_utils.run_and_report = hydra_report
        JobReturn.return_value = hydra_value


class _HeldJobError:
    """Holds back Hydra's "Error executing job with overrides: [...]" line (``JobReturn``'s
    getter writes it to stderr when a job failed): for a user's mistake keel prints one message
    instead; for anything else the line is printed after all, before Hydra's report."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def value(self, job: Any) -> Any:
        """``JobReturn.return_value`` as Hydra's getter gives it, less the line on stderr."""
        from hydra.core.utils import JobStatus

        if job.status == JobStatus.COMPLETED:
            return job._return_value
        self.lines.append(f"Error executing job with overrides: {job.overrides}")
        raise job._return_value

    def release(self) -> None:
        lines, self.lines = self.lines, []
        for line in lines:
            print(line, file=sys.stderr, flush=True)


def _hydra_main_arguments(main: Callable[[], Any]) -> dict[str, Any] | None:
    """The ``config_path``, ``config_name`` and ``task_function`` a ``@hydra.main`` function was
    made with, or None when ``main`` is not one (as far as can be told).

    Private: read from the closure of ``hydra.main``'s ``decorated_main``, whose free variables
    are named so. Hydra keeps them nowhere public (``functools.wraps`` gives ``__wrapped__``,
    the task alone); :func:`fast_help` needs the config directory to render ``--help`` without
    Hydra's ~1 s composition. When the names differ, ``--help`` is Hydra's again (slower).
    """
    try:
        cells = dict(zip(main.__code__.co_freevars, (c.cell_contents for c in main.__closure__ or ())))
    except (AttributeError, ValueError):  # not a closure, or a cell not yet filled
        return None
    names = ("config_path", "config_name", "task_function")
    return {n: cells[n] for n in names} if all(n in cells for n in names) else None


# --- Messages for a user's mistake ------------------------------------------------------------


def user_error_message(
    e: BaseException, args: Sequence[str], script: str = "train.py", task: CodeType | None = None
) -> str | None:
    """The one message for a user's mistake; None for anything else (Hydra reports it).

    Mistakes: a :class:`KeelError` (also wrapped by ``instantiate``), Hydra's composition errors,
    an OmegaConf error outside the task function ``task`` (e.g. in ``hydra.run.dir``), a key
    added with ``+`` that the instantiated class does not take.
    """
    keel_error = _keel_error(e)
    if keel_error is not None:
        return str(keel_error)
    problems = hydra_problems(e, args, script)
    if problems is None and _is_omegaconf_error(e) and task is not None and not _raised_in(e.__traceback__, task):
        problems = [_omegaconf_problem(e, script)]  # e.g. an interpolation in hydra.run.dir
    if problems is None:
        problems = _unknown_argument_problem(e, script)
    return None if problems is None else str(ConfigError(problems))


def _unknown_argument_problem(e: BaseException, script: str) -> list[str] | None:
    """A key added with ``+`` that the instantiated class does not take (``+trainer.max_epoch=3``)."""
    from hydra.errors import InstantiationException

    cause = e.__cause__
    if not (isinstance(e, InstantiationException) and isinstance(cause, TypeError)):
        return None
    found = re.search(r"(\w+(?:\.\w+)*)\(\) got an unexpected keyword argument '(\w+)'", str(cause))
    if found is None:
        return None
    where = re.search(r"full_key: (\S+)", str(e))
    key = f"{where.group(1)}.{found.group(2)}" if where else found.group(2)
    return [
        f"{key}: not an argument of {found.group(1)}. Fix: check the spelling (`python {script} --cfg job` shows "
        f"the composed config) or remove +{key}"
    ]


def _keel_error(e: BaseException) -> KeelError | None:
    """A KeelError, itself or as the cause Hydra's ``instantiate`` wrapped it in."""
    seen = 0
    while e is not None and seen < 5:
        if isinstance(e, KeelError):
            return e
        e, seen = e.__cause__, seen + 1
    return None


def _is_omegaconf_error(e: BaseException) -> bool:
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(e, OmegaConfBaseException)


def _raised_in(tb: TracebackType | None, code: CodeType) -> bool:
    while tb is not None:
        if tb.tb_frame.f_code is code:
            return True
        tb = tb.tb_next
    return False


def hydra_problems(e: BaseException, args: Sequence[str], script: str = "train.py") -> list[str] | None:
    """Hydra's composition error ``e`` as keel problem lines (override, what is allowed, fix).

    ``args``: the command-line overrides, to quote the one at fault. Returns None when ``e`` is
    not an error Hydra raises for a config mistake.
    """
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(e, OverrideParseException):
        return [_parse_problem(e)]
    if isinstance(e, MissingConfigException):
        return [_missing_option_problem(e, args, script)]
    if isinstance(e, ConfigCompositionException):
        cause = e.__cause__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None):
            return [_unknown_key_problem(str(cause.full_key), cause.parent_node, args, script)]
        return [_generic_problem(e, script, args)]
    return None


def _override_for(key: str, args: Sequence[str]) -> str | None:
    """The command-line override that sets ``key`` (``+key=v``, ``key@pkg=v``, ``~key`` too)."""
    for arg in args:
        name = arg.lstrip("+~").split("=", 1)[0].split("@", 1)[0]
        if name == key:
            return arg
    return None


def _parse_problem(e: Any) -> str:
    reason = str(e.message).splitlines()[0]
    reason = reason.removeprefix(f"Error parsing override '{e.override}'").strip() or reason
    return (
        f"{e.override!r}: not a valid override ({reason}). Expected GROUP=OPTION, KEY=VALUE, +KEY=VALUE (add), "
        f"++KEY=VALUE (add or set) or ~KEY (delete). Fix: close brackets and quotes, or quote a value that holds "
        f"spaces, commas, brackets or '=' (e.g. \"data.path='my file.csv'\"); grammar: {GRAMMAR}"
    )


def _missing_option_problem(e: Any, args: Sequence[str], script: str) -> str:
    path = str(e.missing_cfg_file or "")
    group, _, option = path.rpartition("/")
    options = [str(o) for o in (e.options or [])]
    if not group or not options:
        return _generic_problem(e, script)
    override = _override_for(group, args)
    where = ""
    if override is None:  # chosen inside another config (an experiment's defaults list)
        found = re.match(r"In '([^']+)':", str(e))
        where = f" (chosen in {found.group(1)}.yaml)" if found else ""
        override = f"{group}={option}"
    close = difflib.get_close_matches(option, options, n=1, cutoff=0.5)
    guess = (close or options[:1])[0]
    value = override.split("=", 1)[1] if "=" in override else option
    fixed = ",".join(guess if part == option else part for part in value.split(","))  # sweeps: a,b,c
    own = "" if group.startswith("hydra/") else f", or add your own conf/{group}/{option}.yaml"
    return (
        f"{override}{where}: no option {option!r} in config group {group!r}; expected one of: "
        f"{', '.join(options)}. Fix: {'' if close else 'e.g. '}{group}={fixed}{own}"
    )


def _config_groups() -> list[str]:
    """Top-level config groups of the app Hydra is running (``experiment``, ``debug``...)."""
    try:
        from hydra.core.global_hydra import GlobalHydra

        gh = GlobalHydra.instance()
        if not gh.is_initialized():
            return []
        return [g for g in gh.config_loader().list_groups("") if g != "hydra"]
    except Exception:  # only for suggestions: never let them hide the real message
        return []


def _unknown_key_problem(full_key: str, parent: Any, args: Sequence[str], script: str) -> str:
    parent_key, _, leaf = full_key.rpartition(".")
    override = _override_for(full_key, args) or full_key
    value = override.split("=", 1)[1] if "=" in override else None
    keys = [str(k) for k in parent.keys() if parent_key or k != "hydra"] if isinstance(parent, DictConfig) else []
    groups = _config_groups() if not parent_key else []
    where = f"under {parent_key!r}" if parent_key else "at the top level"
    guess = difflib.get_close_matches(leaf, keys + groups, n=1, cutoff=0.6)
    shown = ", ".join(keys[:15]) + (", ..." if len(keys) > 15 else "")
    expected = f"expected a key {where}" + (f": {shown}" if keys else "")
    if guess:
        fixed = f"{parent_key}.{guess[0]}" if parent_key else guess[0]
        fix = f"{fixed}={value}" if value is not None else fixed
        return f"{override}: no key {full_key!r} in the config ({expected}). Fix: {fix} (did you mean {fixed}?)"
    return (
        f"{override}: no key {full_key!r} in the config ({expected}). Fix: check the spelling "
        f"(`python {script} --cfg job` prints every key), or add a new key with +{override.lstrip('+')}"
    )


def _generic_problem(e: BaseException, script: str, args: Sequence[str] = ()) -> str:
    """Hydra's own message in one line; its hints (``To append ... use X``) become the fix."""
    text = str(e).split("\nConfig search path:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    ambiguous = re.match(r"Ambiguous value for argument '(.+)'$", lines[0]) if lines else None
    if ambiguous:
        return (
            f"{ambiguous.group(1)}: several values for one run. Fix: add -m (--multirun) to sweep over them, "
            "or write key=[a,b] for a list value, or key='a,b' for text"
        )
    taken = re.match(r"Could not append to config\. An item is already at '(.+)'\.$", lines[0]) if lines else None
    if taken:
        key = taken.group(1)
        override = _override_for(key, args) or f"+{key}=<value>"
        value = override.split("=", 1)[1] if "=" in override else "<value>"
        return f"{override}: {key!r} is already in the config ('+' adds a new key). Fix: {key}={value}"
    merging = re.match(r"Error merging override (.+)$", lines[0]) if lines else None
    if merging:
        lines[0] = merging.group(1) + ":"
    cause = e.__cause__
    if cause is not None and _is_omegaconf_error(cause):
        lines.append(str(cause).splitlines()[0])
    fix = f"see `python {script} --help` (config groups and their options) and `--cfg job` (every key)"
    hints = [line for line in lines if line.startswith("To append to your")]
    if hints:
        fix = hints[0].split(" use ", 1)[-1] + " to add it"
    text = " ".join(line for line in lines if line not in hints)
    return f"{text.rstrip('.')}. Fix: {fix}"


def _omegaconf_problem(e: BaseException, script: str) -> str:
    key = getattr(e, "full_key", None)
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return (
        f"{key or 'config'}: {first}. Fix: correct the value or interpolation "
        f"(`python {script} --cfg job` prints the composed config)"
    )


__all__ = ["exit_now", "hydra_problems", "run_app", "user_error_message"]
