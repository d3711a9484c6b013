"""Scripts around the library, run from the repository root as modules (`python -m tools.speed`): speed and
learning benchmarks, run comparison plots, pose-LSTM screening, and the GPU and AMX check campaigns."""
