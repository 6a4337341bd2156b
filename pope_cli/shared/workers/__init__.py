"""Sampling on many engine workers: N processes on this machine or N Ray actors on a cluster.

The driver keeps everything that decides or writes (jobs, scoring, files); workers only
generate. `pool.PooledEngine` is an `Engine` whose `drive` replaces `run_rounds`' lock-step
rounds by a queue that hands each idle worker the next batch of requests, so one slow problem
never idles the others. Every sample's seed is fixed by its request, so the files do not depend
on which worker drew what, how many there are, or how often one was restarted.

  plan.py      how many workers, which GPUs or CPU threads each one gets; checked before start
  worker.py    the worker side: environment, engine, one generate call per batch
  local.py     workers as spawned processes talking over pipes
  ray_backend.py  workers as Ray actors (the `ray` extra, imported only when used)
  pool.py      the driver: dealing out batches, scoring, faults and restarts
"""
