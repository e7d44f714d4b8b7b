"""Package-wide settings: how much pertgrn says (verbosity) and progress bars on long work.

One object, :data:`pertgrn.settings`, switches what every step shows.

- **Messages** go through one :mod:`logging` logger, ``"pertgrn"``, whose level follows
  :attr:`settings.verbosity <PertgrnSettings.verbosity>`; by default that is scanpy's
  ``scanpy.settings.verbosity``, so ``sc.settings.verbosity = 3`` shows pertgrn's summaries too.
  Without a logging configuration of the user's, pertgrn prints its messages to stderr itself; once
  the root logger has a handler (``logging.basicConfig``, a notebook or pytest that configures
  logging), it leaves the printing to that handler, so no line appears twice.
- **Progress bars**: training progress is drawn by Lightning through scvi-tools
  (``enable_progress_bar`` of ``train``); everything else (OT pairing over conditions, effects over
  many conditions, evaluation) goes through :func:`progress`. Both draw on stderr, so stdout
  carries only results.

This module stays light (standard library only): ``import pertgrn`` loads it eagerly.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

#: Level of the one-line summaries of steps that remove or leave out cells, between INFO and
#: WARNING: shown at the default verbosity (``1``, scanpy's ``"warning"``).
SUMMARY = 25
#: scanpy's level between DEBUG and INFO (``verbosity = 3``).
HINT = 15
logging.addLevelName(SUMMARY, "SUMMARY")
logging.addLevelName(HINT, "HINT")

#: scanpy's verbosity names, in order (``0`` … ``4``).
VERBOSITY_NAMES = ("error", "warning", "info", "hint", "debug")
#: Lowest level printed at each verbosity.
_LEVEL_OF_VERBOSITY = (logging.ERROR, SUMMARY, logging.INFO, HINT, logging.DEBUG)
#: Verbosity when neither pertgrn's nor scanpy's is set (scanpy's default, ``"warning"``).
_DEFAULT_VERBOSITY = 1


def _scanpy_verbosity() -> int:
    """The current ``scanpy.settings.verbosity`` when scanpy is imported, else its default; never imports scanpy."""
    scanpy = sys.modules.get("scanpy")
    try:
        return int(scanpy.settings.verbosity)  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        # not imported (so nobody set it: scanpy's default applies), or still importing
        return _DEFAULT_VERBOSITY


def _as_verbosity(value: object) -> int:
    """An int 0–4 from an int, a scanpy ``Verbosity`` or a name such as ``"info"``."""
    if isinstance(value, str):
        if value.lower() not in VERBOSITY_NAMES:
            raise ValueError(f"`settings.verbosity` must be one of {list(VERBOSITY_NAMES)} or 0–4, found {value!r}.")
        return VERBOSITY_NAMES.index(value.lower())
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"`settings.verbosity` must be an int 0–4, a name {list(VERBOSITY_NAMES)} or None, "
            f"found {type(value).__name__} ({value!r})."
        )
    if not 0 <= int(value) <= 4:
        raise ValueError(f"`settings.verbosity` must lie in 0–4, found {value!r}.")
    return int(value)


class PertgrnSettings:
    """Settings of pertgrn.

    Attributes
    ----------
    verbosity
        How much pertgrn logs, on scanpy's scale: ``0`` errors, ``1`` warnings and one-line
        summaries of steps that remove cells (the default), ``2`` every step's summary ("info"),
        ``3`` hints, ``4`` debugging. Names (``"info"``) and scanpy's ``Verbosity`` work too.
        ``None`` (the default) follows ``scanpy.settings.verbosity``.
    progress_bar
        Show progress bars on long work: ``True`` (default; ``tqdm.auto`` draws a notebook widget
        in Jupyter and text on a terminal, always to stderr) or ``False``.

    Examples
    --------
    >>> import pertgrn as pg
    >>> pg.settings.verbosity = "info"  # every step's summary
    >>> pg.settings.verbosity
    2
    >>> pg.settings.verbosity = None  # follow scanpy.settings.verbosity again
    >>> pg.settings.progress_bar = False  # quiet batch runs
    >>> pg.settings.progress_bar = True
    """

    def __init__(self) -> None:
        self._progress_bar = True
        self._verbosity: int | None = None

    @property
    def verbosity(self) -> int:
        """Verbosity 0–4; follows ``scanpy.settings.verbosity`` unless set here."""
        return self._verbosity if self._verbosity is not None else _scanpy_verbosity()

    @verbosity.setter
    def verbosity(self, value: int | str | None) -> None:
        self._verbosity = None if value is None else _as_verbosity(value)

    @property
    def log_level(self) -> int:
        """The lowest :mod:`logging` level pertgrn's logger passes at the current verbosity."""
        return _LEVEL_OF_VERBOSITY[self.verbosity]

    @property
    def progress_bar(self) -> bool:
        """Whether long work shows a progress bar."""
        return self._progress_bar

    @progress_bar.setter
    def progress_bar(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"`settings.progress_bar` must be True or False, found {value!r}.")
        self._progress_bar = value

    def __repr__(self) -> str:
        follows = " (follows scanpy)" if self._verbosity is None else ""
        return f"PertgrnSettings(verbosity={self.verbosity}{follows}, progress_bar={self.progress_bar})"


settings = PertgrnSettings()


class _VerbosityLogger(logging.Logger):
    """A logger whose level, unless set explicitly, is the one of :attr:`settings.verbosity`.

    Used as a mixin in front of the class the ``"pertgrn"`` logger already has (``logging.Logger``
    unless another library changed the logger class).

    ``logger.setLevel`` (or pytest's ``caplog.at_level``) still wins while it is set; the level is
    read at every call, so a change of ``scanpy.settings.verbosity`` takes effect at once.
    """

    def getEffectiveLevel(self) -> int:
        if self.level != logging.NOTSET:
            return self.level
        return settings.log_level

    def isEnabledFor(self, level: int) -> bool:
        if self.disabled or self.manager.disable >= level:
            return False
        return level >= self.getEffectiveLevel()


class _Formatter(logging.Formatter):
    """scanpy's look: plain messages, ``WARNING: …`` / ``ERROR: …`` prefixes from WARNING up."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return f"{record.levelname}: {message}" if record.levelno >= logging.WARNING else message


class _StderrHandler(logging.Handler):
    """Prints to the current ``sys.stderr`` while nobody has configured logging (the root logger has no handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not logging.getLogger().handlers and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


#: The logger of every pertgrn message.
logger = logging.getLogger("pertgrn")
if not isinstance(logger, _VerbosityLogger):
    logger.__class__ = (
        _VerbosityLogger
        if type(logger) is logging.Logger
        else type("_VerbosityLogger", (_VerbosityLogger, type(logger)), {})
    )
if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
    _handler = _StderrHandler()
    _handler.setFormatter(_Formatter("%(message)s"))
    logger.addHandler(_handler)


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str | None = None, unit: str = "it"
) -> Iterator[T]:
    """Iterate with a progress bar (on stderr) when :data:`settings.progress_bar <pertgrn.settings>` is on.

    Parameters
    ----------
    iterable
        What to iterate over.
    total
        Number of items, when ``iterable`` has no ``len``.
    desc
        Label of the bar (the step's name, e.g. ``"ot_pairing"``).
    unit
        Name of one item (e.g. ``"condition"``).

    Returns
    -------
    An iterator over ``iterable``.

    Examples
    --------
    >>> from pertgrn._settings import progress
    >>> sum(progress(range(3), desc="demo"))
    3
    """
    from tqdm.auto import tqdm

    return iter(
        tqdm(
            iterable,
            total=total,
            desc=desc,
            unit=unit,
            disable=not settings.progress_bar,
            leave=False,
            file=sys.stderr,
        )
    )
