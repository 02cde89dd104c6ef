"""Real datasets and what every study shares about them: ``sets`` (:class:`SegmentationSet`, splits
by group, image and mask reading), one loader per dataset (``hc18``, ``shenzhen``, ``salient``),
``downloads`` (the registry of downloadable sets, with checksums) and ``despeckle`` (paper 2's
homomorphic wavelet despeckling and the speckle measures)."""
