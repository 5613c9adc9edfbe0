"""Gradient leakage: why plain FedAvg is not private, and what the defences change.

The reference article warns that the updates clients send can be inverted into
their data: "the server starting from randomly generated fake data (resulting
in fake gradients) and then, iteratively updating that data to obtain
gradients more and more like the real ones" (Zhu, Liu and Han 2019, "Deep
Leakage from Gradients", NeurIPS). This module carries out that attack on
fedr's own client training, and a simpler exact one:

- :func:`recover_dense_input`: the analytic inversion of a dense layer with a
  bias. For ``y = x W + b`` and one example, ``dL/dW = x^T g`` and
  ``dL/db = g``, so after one SGD step ``x = ΔW[:, c] / Δb[c]`` for any unit
  ``c`` with ``Δb[c] != 0`` (Phong et al. 2017, "Privacy-Preserving Deep
  Learning via Additively Homomorphic Encryption"; Geiping et al. 2020,
  "Inverting Gradients - How easy is it to break privacy in federated
  learning?", Section 4). This recovers the input of the reference model (one
  dense softmax layer) exactly, and the input of any network whose first layer
  is dense with a bias.
- :func:`deep_leakage`: Deep Leakage from Gradients by gradient matching:
  L-BFGS (here L-BFGS-B from SciPy, bounded to the pixel range) on a dummy
  input, so that the gradients it produces match the observed ones. The label
  is inferred from the sign of the last layer's bias gradient (Zhao et al.
  2020, "iDLG: Improved Deep Leakage from Gradients") when not given, or
  optimised as a soft label as in the original DLG when it cannot be inferred.
- :func:`one_client_update` / :func:`client_updates`: the update a client
  sends after one SGD step on one image, from fedr's own FedAvg process.
- :func:`leakage_demo`: the whole demonstration: the attacks with no defence
  (the server sees the client's update), under secure aggregation (the server
  sees only the sum over the round's clients; Bonawitz et al. 2017), and under
  differential privacy (clip to ``C``, Gaussian noise of standard deviation
  ``z * C``, divide by the clients per round; McMahan et al. 2018). It writes a
  PNG of the original and recovered images and scores each recovery
  (:func:`similarity`).

What the defences do and do not do: secure aggregation hides one client's
update inside the sum, which still leaks a blend of the round's images (and
everything when the other clients' updates are known or absent). Differential
privacy as in McMahan et al. adds the noise at the server, so it protects what
the aggregate (and the released model) reveals; against a curious server it is
meant to be combined with secure aggregation or with noise added by clients.
The demo scores what an attacker recovers from the aggregate in each case.

The code is split by concept: ``_analytic`` (the dense-layer inversion),
``_dlg`` (gradient matching), ``_clients`` (the attacked clients' updates),
``_defences`` (what the server sees under each defence), ``_scores``,
``_png`` and ``_demo`` (the whole demonstration).
"""

from __future__ import annotations

from fedr.attacks._analytic import recover_dense_input
from fedr.attacks._clients import ClientUpdates, client_updates, mlp_model_fn, one_client_update, reference_model_fn
from fedr.attacks._defences import _dp_sum, _plain_sum, _secure_sum  # noqa: F401 - the defences' views, tested
from fedr.attacks._demo import LeakageReport, leakage_demo
from fedr.attacks._dlg import LeakageResult, deep_leakage, infer_label
from fedr.attacks._png import write_png
from fedr.attacks._scores import similarity

__all__ = [
    "ClientUpdates",
    "LeakageReport",
    "LeakageResult",
    "client_updates",
    "deep_leakage",
    "infer_label",
    "leakage_demo",
    "mlp_model_fn",
    "one_client_update",
    "recover_dense_input",
    "reference_model_fn",
    "similarity",
    "write_png",
]
