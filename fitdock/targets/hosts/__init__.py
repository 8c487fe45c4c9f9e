"""The hosts target (``target``) and the staging of runs to hosts without a shared
filesystem (``staging``)."""
