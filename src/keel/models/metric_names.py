"""The metric names the Classifier logs: one list shared by the module, config checks and tests."""

SPLITS = ("train", "val", "test")
PER_SPLIT = ("loss", "acc", "f1", "precision", "recall", "auroc")
# Best-so-far validation values (what sweeps optimize by default).
BEST = ("val/acc_best", "val/f1_best", "val/loss_best")

METRIC_NAMES: tuple[str, ...] = tuple(f"{s}/{m}" for s in SPLITS for m in PER_SPLIT) + BEST
