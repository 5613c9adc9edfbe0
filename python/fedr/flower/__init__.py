"""fedr on Flower's deployment engine: real clients over the network.

A fedr federation is a Flower federation (Beutel et al. 2020, "Flower: A
Friendly Federated Learning Research Framework"): a SuperLink on the server,
one SuperNode per client holding its own data, and Flower's own commands
(``flower-superlink``, ``flower-supernode``, ``flwr run``) between them, over
TLS for anything but loopback. fedr brings the algorithms: the ServerApp runs
a fedr process (the same aggregation, differential privacy, robust
aggregators, server optimizer, seeds and checkpoints as in-process) through
:class:`FedrStrategy`, and the ClientApp trains with fedr's client update on
the data the node's config points at (an R ``.rds`` file, ``.npz``, CSV or a
dataset folder), so a node needs no code of its own.

From Python::

    link = fedr.flower.superlink()                        # flower-superlink
    a = fedr.flower.supernode("site_a.rds", link)         # flower-supernode
    b = fedr.flower.supernode("site_b.rds", link)
    result = fedr.flower.run(process, rounds=5, superlink=link)   # flwr run
    result.state, result.history

From R: ``fed_flower_superlink()``, ``fed_flower_node()``, ``fed_flower_run()``.
The app under ``examples/flower/`` shows a Flower app of your own.
"""

from fedr.flower._credentials import make_certificates, make_node_key
from fedr.flower._launch import FlowerProcess, check_tls, free_port, superlink, supernode
from fedr.flower._run import FlowerRoundWarning, FlowerRun, FlowerSeedWarning, check_run_target, progress_line, run
from fedr.flower._node import load_node_data
from fedr.flower._checks import check_flower_aggregator
from fedr.flower._strategy import FedrStrategy

__all__ = [
    "FedrStrategy",
    "FlowerProcess",
    "FlowerRoundWarning",
    "FlowerSeedWarning",
    "FlowerRun",
    "check_flower_aggregator",
    "check_run_target",
    "check_tls",
    "free_port",
    "load_node_data",
    "make_certificates",
    "make_node_key",
    "progress_line",
    "run",
    "superlink",
    "supernode",
]
