"""longgen's submitit launchers as Hydra plugins (Hydra instantiates launchers only from the hydra_plugins
package): `hydra/launcher=submitit_slurm` and `submitit_local` (conf/hydra/launcher/). The work is done in
longgen/run/preemption.py; this module stays light, since Hydra imports every plugin module when it starts."""

from longgen.run.preemption import SubmititLauncher


class LocalLauncher(SubmititLauncher):
    """`hydra/launcher=submitit_local`: every job a process of this machine (submitit's local executor)."""

    cluster = "local"


class SlurmLauncher(SubmititLauncher):
    """`hydra/launcher=submitit_slurm`: every job a SLURM job of one array (submitit's SLURM executor)."""

    cluster = "slurm"
