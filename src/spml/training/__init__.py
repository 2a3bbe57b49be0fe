"""Typed configs, the training loop, the run folder and run model, method hooks and grids."""

from spml.training.config import (
    EarlyStoppingConfig,
    LinearInitConfig,
    TrainConfig,
    build_dataclass,
    config_to_yaml,
    default_config_path,
    parse_overrides,
    shipped_config,
)
from spml.training.autotune import train_tuned as train  # selects on val like spml.train (select=False: not)
from spml.training.engine import Phase, RunState, Trainer, TrainingDiverged, plan_phases, resume
from spml.training.hooks import STANDARD, MethodInfo, Requires, RunContext, TrainingHooks
from spml.training.resolve import ResolvedConfig, check_config, resolve_config, resolve_paths
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
    "ResolvedConfig",
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
    "load_run",
    "parse_overrides",
    "plan_phases",
    "read_result",
    "read_results",
    "resolve_config",
    "resolve_paths",
    "resume",
    "shipped_config",
    "train",
]
