"""Many runs at once: a benchmark table over presets x seeds (:mod:`~pipeline.experiments.tables`), fanned out as
DVC experiments run by ``dvc queue`` workers (:mod:`~pipeline.experiments.queue`) or as Slurm jobs
(:mod:`~pipeline.experiments.slurm`). Each run is the pipeline's stages (:data:`pipeline.workflow.STAGE_NAMES`) in
its own folder; none of these modules restates them."""
