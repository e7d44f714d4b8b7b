"""Package-wide settings: progress bars for long work.

One object, :data:`pertgrn.settings`, switches what every long step shows. Training progress is
drawn by Lightning through scvi-tools (``enable_progress_bar`` of ``train``); everything else
(OT pairing over conditions, effects over many conditions, evaluation) goes through
:func:`progress`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class PertgrnSettings:
    """Settings of pertgrn.

    Attributes
    ----------
    progress_bar
        Show progress bars on long work: ``True`` (default; ``tqdm.auto`` draws a notebook widget
        in Jupyter and text on a terminal, always to stderr) or ``False``.

    Examples
    --------
    >>> import pertgrn as pg
    >>> pg.settings.progress_bar = False  # quiet batch runs
    >>> pg.settings.progress_bar = True
    """

    def __init__(self) -> None:
        self._progress_bar = True

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
        return f"PertgrnSettings(progress_bar={self.progress_bar})"


settings = PertgrnSettings()


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str | None = None, unit: str = "it"
) -> Iterator[T]:
    """Iterate with a progress bar when :data:`settings.progress_bar <pertgrn.settings>` is on.

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

    return iter(tqdm(iterable, total=total, desc=desc, unit=unit, disable=not settings.progress_bar, leave=False))
