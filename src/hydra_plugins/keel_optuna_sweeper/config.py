"""The options of ``hydra/sweeper=keel_optuna`` (set them in conf/hparams_search/*.yaml)."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class KeelOptunaSweeperConf:
    _target_: str = "hydra_plugins.keel_optuna_sweeper.keel_optuna_sweeper.KeelOptunaSweeper"
    # Finished trials (complete + pruned + failed) the study should hold: a resumed study runs
    # only the missing ones.
    n_trials: int = 20
    # Trials asked and launched together (one launcher batch): 1 for the basic launcher; the
    # number of parallel processes with hydra/launcher=joblib.
    n_jobs: int = 1
    # auto: the way the metric improves (keel.tasks.metric_mode): maximize acc, f1, r2;
    # minimize losses, rmse, mae.
    direction: str = "auto"
    # What the study optimizes: the value train.py returns. auto: the task's optimized metric
    # (val/acc_best, val/rmse_best), the task told from the composed config as a job tells it.
    metric: Optional[str] = "${optimized_metric}"
    study_name: str = "${task_name}"
    # null: a fresh SQLite study inside the sweep directory (no resume across commands).
    storage: Optional[str] = None
    # {type: tpe|random|grid, seed: N, ...}: other keys go to the Optuna sampler's constructor.
    sampler: Dict[str, Any] = field(default_factory=lambda: {"type": "tpe", "seed": None})
    # {type: median|percentile|threshold|successive_halving|hyperband|none, ...}
    pruner: Dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    # The per-epoch value reported to the pruner (null or auto: metric, resolved); must improve in
    # the study's direction.
    pruning_metric: Optional[str] = None
    # Stop the sweep (exit 1) when more than this fraction of its trials crashed; 1.0: never.
    max_failure_rate: float = 1.0
    # The search space: override key -> {type: float|int|categorical, ...} (keel.sweep.search_space).
    # null: only the command-line sweeps (e.g. `optimizer.lr=interval(1e-4,1e-2)`).
    params: Optional[Dict[str, Any]] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="keel_optuna", node=KeelOptunaSweeperConf, provider="keel")
