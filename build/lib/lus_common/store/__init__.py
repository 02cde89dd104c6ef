"""What a run leaves behind: ``results`` (one folder per run, written atomically, reused only when
its key matches) and ``environment`` (the versions and machine recorded with every run)."""
