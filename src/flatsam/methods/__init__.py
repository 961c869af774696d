"""Published methods as presets of the engine; importing this package fills the registry (the references
first, so that listings start with them)."""
# isort: skip_file

from flatsam.methods.registry import METHODS, Default, MethodInfo, build_method, method_info, register
from flatsam.methods.classic import ASAM, SAM, SGD
from flatsam.methods.ausam import AUSAM
from flatsam.methods import sampled, scheduled, gsam, saf, custom  # noqa: F401  (they register their presets)
from flatsam.methods import robust  # noqa: F401  (ausam-mix, ausam-lowloss: ours)
from flatsam.methods.custom import Composed

__all__ = [
    "ASAM",
    "AUSAM",
    "Composed",
    "METHODS",
    "SAM",
    "SGD",
    "Default",
    "MethodInfo",
    "build_method",
    "method_info",
    "register",
]
