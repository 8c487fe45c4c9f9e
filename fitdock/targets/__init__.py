"""Where ranks run: each target a class behind ``base.Target``, found by name through
``registry`` (which also reads the ``fitdock.targets`` entry-point group).

``local``   this machine, the job's interpreter
``docker``  this machine, in the environment's image
``hosts/``  a list of machines reached through a launch agent (ssh), with staging
``slurm/``  a Slurm batch job: the sbatch script, the scontrol client, the record
"""
