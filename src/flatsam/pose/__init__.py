"""Human pose estimation with SimCC: head and loss, PCK metrics, the MPII reader and a synthetic stand-in."""

from flatsam.pose.data import JOINTS, POSE_DATASETS, PoseData, load_pose_dataset
from flatsam.pose.metrics import head_size, pck_hits, torso_size
from flatsam.pose.simcc import SimCCHead, SimCCModel, decode, encode, simcc_loss, simcc_model

__all__ = [
    "JOINTS",
    "POSE_DATASETS",
    "PoseData",
    "SimCCHead",
    "SimCCModel",
    "decode",
    "encode",
    "head_size",
    "load_pose_dataset",
    "pck_hits",
    "simcc_loss",
    "simcc_model",
    "torso_size",
]
