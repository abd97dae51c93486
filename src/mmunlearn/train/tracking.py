"""Experiment tracking (`--log-with tensorboard|wandb|mlflow|trackio|...`) through accelerate's trackers.

The loop (train/loop.py) calls `accelerator.log` with every loss term and the learning rate each step,
and the engine logs its periodic evaluations the same way; without `--log-with` the Accelerator has no
trackers and those calls do nothing. Logs go under OUT/logs/ (tensorboard: OUT/logs/<project>/,
trackio: its database in OUT/logs/trackio/ unless TRACKIO_DIR says otherwise).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

LOG_DIR = "logs"
# pip packages of the trackers whose package name is not the tracker's
PACKAGES = {"comet_ml": "comet-ml", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab"}


def known_trackers() -> list[str]:
    """Every tracker accelerate can log to (its LOGGER_TYPE_TO_CLASS): tensorboard, wandb, mlflow, trackio..."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return list(LOGGER_TYPE_TO_CLASS)


def check_tracker(name: str | None) -> str | None:
    """The tracker name, or None; ValueError (one `error:` line in the CLI) for a name accelerate does not know
    or a tracker whose package is missing, before anything is loaded or written."""
    if name is None or name == "" or name == "none":
        return None
    known = known_trackers()
    if name not in known:
        raise ValueError(f"--log-with must be one of accelerate's trackers: {', '.join(known)} (got {name!r})")
    from accelerate.tracking import get_available_trackers

    if name not in {str(getattr(t, "value", t)) for t in get_available_trackers()}:
        package = PACKAGES.get(name, name)
        extra = " (or pip install 'mmunlearn[track]')" if name == "tensorboard" else ""
        raise ValueError(f"--log-with {name} needs the {package} package, which is not installed: "
                         f"pip install {package}{extra}")
    return name


def tracker_kwargs(name: str | None, out: Path) -> dict:
    """make_accelerator's keyword arguments for this tracker: accelerate's log_with and logging_dir."""
    if name is None:
        return {}
    logs = Path(out) / LOG_DIR
    if name == "trackio" and "TRACKIO_DIR" not in os.environ and "trackio" not in sys.modules:
        os.environ["TRACKIO_DIR"] = str((logs / "trackio").resolve())  # trackio reads it once, on import
    return {"log_with": name, "logging_dir": logs}


def _hparam(value):
    """Trackers take str/int/float/bool hyper-parameters only (tensorboard refuses None, lists, dicts)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, default=str)


def start_tracking(accelerator, project: str, config: dict) -> dict | None:
    """Open the accelerator's trackers (a no-op without --log-with); returns what the run log records."""
    if not accelerator.log_with:
        return None
    accelerator.init_trackers(project, config={k: _hparam(v) for k, v in config.items()})
    name = str(accelerator.log_with[0]).split(".")[-1].lower()
    where = Path(accelerator.logging_dir) / project if name == "tensorboard" else os.environ.get("TRACKIO_DIR")
    return {"with": name, "project": project, "dir": str(where) if where else None}


def stop_tracking(accelerator) -> None:
    """Close the trackers (flushes event files). Not `accelerator.end_training()`: that also destroys the
    process group, which the evaluation after training still needs on several processes."""
    for tracker in getattr(accelerator, "trackers", []):
        tracker.finish()
    accelerator.trackers = []
