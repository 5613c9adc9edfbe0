"""Gradient leakage from Python: the attack the reference article describes.

Ten clients each hold one Fashion-MNIST image and train one SGD step with
fedr's FedAvg; the attacker recovers client 0's image from what the server
sees, with no defence, under secure aggregation and under differential
privacy (clip 0.5, noise multiplier 1.0, 10 clients per round). See
``fedr.attacks`` for the attacks and ``examples/gradient_leakage.R`` for R.

Run with ``.venv/bin/python examples/gradient_leakage.py [picture.png]``.
"""

import sys

from fedr import attacks

path = sys.argv[1] if len(sys.argv) > 1 else "gradient-leakage.png"
report = attacks.leakage_demo(path=path, clients_per_round=10, learning_rate=0.02,
                              noise_multiplier=1.0, clip=0.5, seed=0)
print(report)
print("secure sum:", report.settings["secure_via"], "| DP:", report.settings["dp_via"])
