"""Scoring trained models: the evaluation command, content transfer, leakage probes, frame metrics, the digit
classifier that reads generated frames, and the field's benchmark protocols."""
