"""Programs that run beside the ranks, where the job runs (in its interpreter, its image,
on its hosts): stdlib only, since they run under interpreters that hold no fitdock and
start with every rank.

``mpiprobe.py``    asked before a launch: which MPI library the job's mpi4py and Horovod load
``worldguard.py``  the ranks' ``sitecustomize``: a rank whose MPI world is smaller than
                   planned fails at once instead of training alone
"""
