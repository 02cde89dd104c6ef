"""lus_common: the small shared package behind the lus-tl-book notebooks.

One module per concern (see ../shared/STYLE.md): ``paths`` (where data and results live),
``datasets`` (registry of downloadable sets), ``hc18`` (HC18 loader), ``phantoms`` (synthetic
data), ``models`` (architectures and weight sources), ``strategies`` (freezing), ``training``,
``metrics``, ``stats``, ``results`` (run store), ``plots``, ``bench``, ``runner`` and ``cli``.
Nothing heavy is imported here: ``import lus_common`` is cheap and has no side effects.
"""

__version__ = "0.1.0"
