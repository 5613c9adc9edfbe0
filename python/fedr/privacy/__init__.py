"""Privacy for federated learning: differential privacy with accounting, secure aggregation.

Plain FedAvg is not private: the server sees every client's update, and an
update can be inverted into the client's data (Zhu et al. 2019, "Deep Leakage
from Gradients"; :mod:`fedr.attacks` shows it). The cures the reference
article names are here: differential privacy (McMahan et al. 2018, "Learning
Differentially Private Recurrent Language Models"; Andrew et al. 2021 for
adaptive clipping), with the privacy budget from ``dp-accounting``, and secure
aggregation (Bonawitz et al. 2017), with the cryptography from ``cryptography``.
Both together: distributed DP (Agarwal et al. 2021, the Skellam mechanism),
where the clients add the noise inside the secure sum, so not even the server
sees an un-noised sum. Each is an aggregator, passed as
``build_weighted_fed_avg(..., aggregator=)``.
"""

from fedr.privacy._accounting import ACCOUNTANTS, SAMPLINGS, epsilon
from fedr.privacy._plan import PrivacyPlan, epsilon_curve, plan
from fedr.privacy._dp import ClippedUpdate, ClipView, GaussianDP
from fedr.privacy._ddp import DistributedDP, PrivacyWeakenedWarning, distributed_dp
from fedr.privacy._dp_api import check_sampling, gaussian_adaptive, gaussian_fixed
from fedr.privacy._noise import ReproducibleNoiseWarning
from fedr.privacy._report import report
from fedr.privacy._secagg import AdvertiseRequest, MaskedInput, SecureMean, SecureSum, SecureView, secure_mean, secure_sum
from fedr.privacy._secagg_protocol import (
    AdvertiseKeys,
    EncryptedShare,
    RoundConfig,
    SecAggClient,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = [
    "ACCOUNTANTS",
    "AdvertiseKeys",
    "AdvertiseRequest",
    "ClipView",
    "ClippedUpdate",
    "DistributedDP",
    "EncryptedShare",
    "GaussianDP",
    "MaskedInput",
    "PrivacyPlan",
    "PrivacyWeakenedWarning",
    "ReproducibleNoiseWarning",
    "RoundConfig",
    "SAMPLINGS",
    "SecAggClient",
    "SecureMean",
    "SecureSum",
    "SecureView",
    "UnmaskRequest",
    "UnmaskResponse",
    "check_sampling",
    "distributed_dp",
    "epsilon",
    "epsilon_curve",
    "gaussian_adaptive",
    "gaussian_fixed",
    "plan",
    "report",
    "secure_mean",
    "secure_sum",
]
