"""Run logging: a console + file logger and a TensorBoard writer that is a no-op when disabled."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of each message, not the one at creation: the logger is
    process-wide, and a caller that redirects stdout (pytest's capture, ``contextlib.redirect_stdout``, a notebook)
    must not leave it writing to a closed stream."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property always reads sys.stdout
        pass


def get_logger(name: str = "ltframework", log_file: Path | None = None, verbose: bool = True) -> logging.Logger:
    """A logger printing to stdout and, when ``log_file`` is given, appending to it."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    if not any(isinstance(h, logging.StreamHandler) and getattr(h, "_ltf_console", False)
               for h in logger.handlers):
        console = _StdoutHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        console._ltf_console = True
        logger.addHandler(console)
    if log_file is not None:
        for handler in list(logger.handlers):  # one file per run: drop a previous run's file handler
            if isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
                handler.close()
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(file_handler)
    return logger


def close_file_handlers(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()


class TensorboardWriter:
    """Thin wrapper over ``SummaryWriter``; every call is a no-op when TensorBoard is disabled."""

    def __init__(self, log_dir: Path | None, enabled: bool):
        self._writer = None
        if enabled and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: tensorboard is slow to import
            self._writer = SummaryWriter(log_dir=str(log_dir))

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalars(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        if self._writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{prefix}{key}", value, step)

    def figure(self, tag: str, figure, step: int) -> None:
        if self._writer is not None:
            self._writer.add_figure(tag, figure, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
