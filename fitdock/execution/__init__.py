"""Target-independent execution: ``submit`` (from a JobSpec to a supervised run), the
``supervisor`` (attempts, deadline, fail-fast, watchdog), the pure restart ``policy``, the
``judge`` of attempt results, and ``run`` (the ``Run`` handle)."""
