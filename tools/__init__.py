"""Scripts around the library, run from the repository root as modules (`python -m tools.speed`): speed and
learning benchmarks, run comparison plots, pose-LSTM screening, and the GPU and AMX check campaigns."""


def print_table(rows: dict[str, dict[str, float]], whole: tuple[str, ...], digits: int) -> None:
    """Print one Markdown row per checkpoint path: its figures, the columns in `whole` as whole numbers."""
    columns = list(next(iter(rows.values())))
    print("| checkpoint | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for path, row in rows.items():
        print(f"| {path} | " + " | ".join(f"{row[c]:.0f}" if c in whole else f"{row[c]:.{digits}f}" for c in columns)
              + " |")
