"""Typed configs, the training loop, the run folder and run model, method hooks and grids."""

from spml.training.config import (
    EarlyStoppingConfig,
    LinearInitConfig,
    TrainConfig,
    build_dataclass,
    config_to_yaml,
    default_config_path,
    load_config,
    parse_overrides,
    save_config,
    shipped_config,
)
from spml.training.engine import Phase, RunState, Trainer, TrainingDiverged, plan_phases, resume, train
from spml.training.hooks import STANDARD, MethodInfo, Requires, RunContext, TrainingHooks
from spml.training.resolve import check_config, resolve_paths
from spml.training.runfolder import RunResult, read_result, read_results
from spml.training.runmodel import LoadedRun, RunModel, evaluate_run, load_run

__all__ = [
    "STANDARD",
    "EarlyStoppingConfig",
    "LinearInitConfig",
    "LoadedRun",
    "MethodInfo",
    "Phase",
    "Requires",
    "RunContext",
    "RunModel",
    "RunResult",
    "RunState",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "TrainingHooks",
    "build_dataclass",
    "check_config",
    "config_to_yaml",
    "default_config_path",
    "evaluate_run",
    "load_config",
    "load_run",
    "parse_overrides",
    "plan_phases",
    "read_result",
    "read_results",
    "resolve_paths",
    "resume",
    "save_config",
    "shipped_config",
    "train",
]
