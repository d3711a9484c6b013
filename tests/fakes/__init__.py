"""Fakes the tests share: tiny data sets written in the real formats, stand-in models and predictors, and tiny
runs. Test modules import from here, never from one another."""
