"""Typed configs, the training loop, the run folder and run model, method hooks and grids.

The names below are imported on first use (:mod:`spml._lazy`): importing ``spml.training.config``
or ``spml.training.runfolder`` does not import the engine or torch.
"""

from spml._lazy import lazy_exports

_CONFIG, _ENGINE, _HOOKS, _RESOLVE = "spml.training.config", "spml.training.engine", "spml.training.hooks", "spml.training.resolve"
_RUNFOLDER, _RUNMODEL = "spml.training.runfolder", "spml.training.runmodel"

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "EarlyStoppingConfig": _CONFIG,
        "LinearInitConfig": _CONFIG,
        "TrainConfig": _CONFIG,
        "build_dataclass": _CONFIG,
        "config_to_yaml": _CONFIG,
        "default_config_path": _CONFIG,
        "parse_overrides": _CONFIG,
        "shipped_config": _CONFIG,
        # spml.training.train selects on val like spml.train (select=False: it does not).
        "train": "spml.training.autotune:train_tuned",
        "Phase": "spml.training.phases",
        "plan_phases": "spml.training.phases",
        "RunState": "spml.training.loop",
        "Trainer": _ENGINE,
        "resume": _ENGINE,
        "TrainingDiverged": "spml.training.divergence",
        "time_epochs": "spml.training.timing",
        "STANDARD": _HOOKS,
        "MethodInfo": _HOOKS,
        "ReportFigure": _HOOKS,
        "Requires": _HOOKS,
        "RunContext": _HOOKS,
        "TrainingHooks": _HOOKS,
        "ResolvedConfig": _RESOLVE,
        "check_config": _RESOLVE,
        "resolve_config": _RESOLVE,
        "resolve_paths": _RESOLVE,
        "RunResult": _RUNFOLDER,
        "read_result": _RUNFOLDER,
        "read_results": _RUNFOLDER,
        "LoadedRun": _RUNMODEL,
        "RunModel": _RUNMODEL,
        "evaluate_run": _RUNMODEL,
        "load_run": _RUNMODEL,
    },
)
