"""Scripts that measure mmoe and print the tables of BENCHMARKS.md (not part of the installed wheel).

Run one from the checkout root as ``python -m benchmarks.<name> ...`` or ``python benchmarks/<name>.py
...``; they import each other as ``benchmarks.<name>`` (shared pieces: :mod:`benchmarks.recipe_runs`,
:mod:`benchmarks.recipe_overrides`), and tests import them the same way.
"""
