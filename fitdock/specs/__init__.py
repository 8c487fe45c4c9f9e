"""What a job is, as pure data (pydantic, no I/O): ``job`` (JobSpec), ``distribution`` (Mpi,
Horovod, PyTorchConfiguration) and ``compute`` (Hosts, Slurm). Estimators build them;
targets and distributions read them."""
