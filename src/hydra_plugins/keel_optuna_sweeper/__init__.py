"""keel's Optuna sweeper for Hydra (``hydra/sweeper=keel_optuna``): the implementation is
:mod:`keel.sweep.optuna_sweeper`; this package only registers it with Hydra."""
