"""Where things live and how a run is configured: ``paths`` (data, results, weights), ``device``
(auto / cpu / cuda), ``profiles`` (smoke / quick / paper, with inheritance) and ``registry``
(one :func:`~lus_common.config.registry.lookup` for every name a user types)."""
