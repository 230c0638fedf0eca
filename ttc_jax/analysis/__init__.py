"""Analysis of stored outcomes: difficulty bins, verifier quality, study summaries.

Pure functions over arrays and records (no models, no files): they re-slice what
the pipeline stored and never re-run sampling or search.
"""
