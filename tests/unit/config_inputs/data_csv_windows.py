"""conf/data/csv_windows.yaml reads a time-series file: a tiny sine series and the overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def overrides(tmp_path: Path) -> list[str]:
    t = np.arange(300)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"value": np.sin(2 * np.pi * t / 25) + 0.05 * rng.normal(size=t.size),
                       "other": np.cos(2 * np.pi * t / 25)})
    df.to_csv(tmp_path / "series.csv", index=False)
    return [f"data.path={tmp_path / 'series.csv'}", "data.target=value", "data.window=16", "data.batch_size=32"]
