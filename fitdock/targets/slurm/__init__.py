"""The slurm target (``target``): the sbatch script (``sbatch``), the scontrol/sbatch/scancel
client (``ctl``) and the reading of the job's state into the run record (``record``)."""
