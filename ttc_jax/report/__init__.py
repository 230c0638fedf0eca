"""The study's figures (matplotlib ``Figure`` objects) and its markdown report.

Everything here is a function of stored results (dicts and arrays); the
pipeline's report stage writes the files.
"""
