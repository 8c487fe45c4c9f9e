"""How ranks are formed, knowing no target.

``mpimatch``  which MPI launcher starts a job: the one whose MPI the job's own libraries
              load, found by probing the job's environment; every target asks it
"""
