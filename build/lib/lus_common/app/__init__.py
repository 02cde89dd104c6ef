"""How users meet the project: ``cli`` (the ``lus`` command), ``runner`` (papermill and
jupyter-book) and ``bench`` (training and phantom benchmarks)."""
