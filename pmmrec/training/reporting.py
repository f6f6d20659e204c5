"""Experiment tracking through the libraries people already use: TensorBoard, Weights & Biases, MLflow.

The run's log.jsonl stays the source of truth; reporters receive the same records (every step's losses, learning
rates and throughput, every evaluation) and are optional: each backend needs its own package, and a missing one is
a one-line error before training starts. Only rank 0 reports.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal, Protocol

from pmmrec.errors import ConfigError
from pmmrec.training.run_dir import flatten

Backend = Literal["tensorboard", "wandb", "mlflow"]
PACKAGES: dict[str, tuple[str, str]] = {  # backend -> (module to import, pip package)
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}


class Reporter(Protocol):
    """One tracking backend."""

    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardReporter:
    """Event files under RUN/tensorboard (open with `tensorboard --logdir RUN/tensorboard`)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", f"```\n{config}\n```")

    def scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbReporter:
    """A Weights & Biases run (honours WANDB_MODE, WANDB_PROJECT and the other WANDB_* variables)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(dir=str(run_dir), name=run_dir.name, config=config, reinit=True)

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflowReporter:
    """An MLflow run (honours MLFLOW_TRACKING_URI; the default is a local ./mlruns store)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params({key: str(value)[:250] for key, value in flatten(config).items()})

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({name.replace("@", "_at_"): value for name, value in values.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


_CLASSES: dict[str, type] = {"tensorboard": TensorBoardReporter, "wandb": WandbReporter, "mlflow": MLflowReporter}


def check_backends(backends: list[str]) -> None:
    """Refuse, in one line, a backend whose package is not installed (before any training)."""
    for backend in backends:
        module, package = PACKAGES[backend]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--report-to {backend}: the {package} package is not installed (pip install {package})")


class Reporters:
    """Every configured backend, fed the records the run logs; a no-op when none is configured."""

    def __init__(self, backends: list[str], run_dir: Path, config: dict[str, Any], enabled: bool = True) -> None:
        check_backends(backends)
        self.active: list[Reporter] = (
            [_CLASSES[backend](run_dir, config) for backend in backends] if enabled else []
        )

    def record(self, record: dict[str, Any], step: int) -> None:
        """Send a log.jsonl record's numbers, named `train/...` for steps and `<split>/...` for evaluations."""
        if not self.active:
            return
        prefix = "train" if record.get("event") == "step" else str(record.get("split", "eval"))
        values = {
            f"{prefix}/{key}": float(value)
            for key, value in record.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("epoch", "step")
        }
        for reporter in self.active:
            reporter.scalars(values, step)

    def close(self) -> None:
        for reporter in self.active:
            reporter.close()
        self.active = []

