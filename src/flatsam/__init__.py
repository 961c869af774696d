"""flatsam: sharpness-aware minimization at the cost of SGD.

``method = schedule × selection × perturbation × reuse`` on one engine (``SharpnessAware``); the
published methods are presets (``SAM``, ``ASAM``, ``AUSAM``, ``LookSAM``, …) listed in ``METHODS``.
"""

from flatsam import data
from flatsam.component import Component, Outcome, StepContext
from flatsam.engine import SharpnessAware, StepInfo, running_stats_frozen
from flatsam.methods import (
    ASAM,
    AUSAM,
    METHODS,
    SAM,
    SGD,
    Composed,
    MethodInfo,
    build_method,
    method_info,
)
from flatsam.methods.gsam import GSAM, GSAMPerturbation
from flatsam.methods.saf import MESA, SAF
from flatsam.methods.sampled import ESAM, KSAM, InfoBatchSAM, MicroBatchSAM, MSharpnessSAM, UniformSAM
from flatsam.methods.scheduled import AESAM, ARSAM, SSSAM, AELookSAM, LookSAM
from flatsam.perturbation import (
    ASAMPerturbation,
    NoisySAMPerturbation,
    Perturbation,
    SAMPerturbation,
    StochasticWeightPerturbation,
)
from flatsam.reuse import LookSAMReuse, NoReuse, PSFReuse, Reuse
from flatsam.schedule import (
    AEThreshold,
    Always,
    ARSAMWindow,
    Bernoulli,
    EveryK,
    MicroBatchScheduler,
    Never,
    Schedule,
)
from flatsam.selection import (
    ADLPSampler,
    AllRows,
    InfoBatchPruning,
    MicroBatch,
    MSharpness,
    RowPlan,
    Selection,
    SharpnessSensitiveSelection,
    TopKLoss,
    UniformSampler,
)

__version__ = "0.2.0"

__all__ = [
    # engine
    "SharpnessAware",
    "StepInfo",
    "StepContext",
    "Outcome",
    "Component",
    "running_stats_frozen",
    # presets and registry
    "SGD",
    "SAM",
    "ASAM",
    "AUSAM",
    "LookSAM",
    "AESAM",
    "AELookSAM",
    "ARSAM",
    "SSSAM",
    "ESAM",
    "KSAM",
    "MicroBatchSAM",
    "MSharpnessSAM",
    "UniformSAM",
    "InfoBatchSAM",
    "GSAM",
    "SAF",
    "MESA",
    "Composed",
    "METHODS",
    "MethodInfo",
    "build_method",
    "method_info",
    # components
    "Schedule",
    "Always",
    "Never",
    "EveryK",
    "Bernoulli",
    "AEThreshold",
    "ARSAMWindow",
    "MicroBatchScheduler",
    "Selection",
    "RowPlan",
    "AllRows",
    "ADLPSampler",
    "UniformSampler",
    "MicroBatch",
    "MSharpness",
    "TopKLoss",
    "SharpnessSensitiveSelection",
    "InfoBatchPruning",
    "Perturbation",
    "SAMPerturbation",
    "ASAMPerturbation",
    "StochasticWeightPerturbation",
    "NoisySAMPerturbation",
    "GSAMPerturbation",
    "Reuse",
    "NoReuse",
    "LookSAMReuse",
    "PSFReuse",
    "data",
]
