"""The supervisor: keeps N worker processes of an app alive and stops them gracefully.

* :mod:`.states` - the life of one process, a pure state machine (supervisord's states);
* :mod:`.scaling` - how many processes to run, from the age of the oldest ready job;
* :mod:`.runner` - :class:`Supervisor`, which spawns, watches, signals and reaps them;
* :mod:`.status` - the status file it writes and ``sleipnir status`` reads;
* :mod:`.child` - the worker's side: its title, memory limit and link to the supervisor.

It knows nothing of brokers beyond ``Broker.stats()`` (for scaling), and imports
no web framework.
"""

from __future__ import annotations

from .runner import Supervisor
from .scaling import ScalePolicy
from .states import Process, ProcessConfig, ProcessState, transition

__all__ = ["Process", "ProcessConfig", "ProcessState", "ScalePolicy", "Supervisor", "transition"]
