"""Commands that download and convert datasets into the files the loaders read, run from the repository root
as modules (`python -m datasets.prepare.convert_kth`)."""
