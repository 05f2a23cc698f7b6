"""`gflowvlm reproduce`: the papers' comparison in miniature (recipe -> grid of cells -> results.json -> report).

recipe.py (what to run), runner.py (running cells, resumable), results.py (results.json rows and aggregates),
report.py (report.md and plots from results.json alone).
"""
