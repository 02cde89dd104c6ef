"""lus_common: the small shared package behind the lus-tl-book notebooks.

One package per question (see ../shared/STYLE.md): ``config`` (paths, device, profiles, lookups),
``data`` (datasets and loaders), ``phantoms`` (synthetic data), ``models`` (architectures and weight
sources), ``training``, ``evaluation`` (metrics, biometry, statistics), ``figures``, ``store``
(the run store), ``studies`` (the registry of studies and one module per study) and ``app``
(the ``lus`` command, the notebook runner and the benchmarks).
Nothing heavy is imported here: ``import lus_common`` is cheap and has no side effects.
"""

__version__ = "0.1.0"
