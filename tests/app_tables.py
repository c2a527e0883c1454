"""Read the app's chosen-merge table (a markdown pipe table) back as a DataFrame, for AppTest tests."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from explorer.app_state import CHOICE_HEADERS


def chosen_table(at) -> pd.DataFrame:
    """The table under "Chosen merge", with the app's full column names and numbers as floats in metric
    units (cells in percent, "63.08 %", are read back as 0.6308)."""
    tables = [m.value for m in at.markdown if m.value.startswith("| task |")]
    assert len(tables) == 1, f"expected one chosen-merge table, found {len(tables)}"
    lines = tables[0].splitlines()
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]] for line in lines]
    full = {short: name for name, short in CHOICE_HEADERS.items()}
    df = pd.DataFrame(cells[2:], columns=[full.get(h, h) for h in cells[0]])
    for col in df.columns[1:]:
        percent = df[col].str.endswith(" %")
        values = pd.to_numeric(df[col].str.removesuffix(" %").replace("—", np.nan))
        df[col] = np.where(percent, values / 100.0, values)
    return df
