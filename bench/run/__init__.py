"""One run's folder (``runs/<name>-<hash>/``): its layout, writers and readers (:mod:`bench.run.folder`),
and shards of one run across processes (:mod:`bench.run.shards`)."""
