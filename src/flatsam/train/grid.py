"""The robust-promise grid (bench/README, "The grid"): eight settings of label-noise Fashion-MNIST, fixed
before any of them ran, on which a preset must stay within 0.5 points of SAM, final and early-stopped, at
no more than SGD's wall-clock, wherever the setting decides.

Four factors at two levels — model (the small CNN, ResNet-8), run length (40, 100 epochs), label noise
(20 %, 40 %) and random crops (off, 2-pixel padding) — in the half fraction whose crops level is the
product of the other three (defining relation I = ABCD, resolution IV: every factor varies, four settings
at each level, and no main effect is aliased with another main effect or a two-factor interaction). One
setting, ``grid-cnn-40ep-n40-crop``, is the tuning setting; the other seven are held out.

Every setting (``base``): 5,000 training images (seeded, stratified), a tenth held out as the validation
split with the same label noise, batch 128, SGD with Nesterov momentum 0.9 at lr 0.02, weight decay 5e-4,
a linear warm-up over a tenth of the epochs, then cosine; precise-BN evaluation; the test set every 10
epochs and at every new best validation accuracy; one thread; seeds 0, 1, 2. Methods: SGD and SAM (ρ 0.1)
at the full length, every candidate planned for SGD's wall-clock (``equal_time_epochs``: the length / 1.05).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from flatsam.train.config import TrainConfig

MODELS = ("cnn", "resnet8")
LENGTHS = (40, 100)
NOISES = (0.2, 0.4)
CROP = 2  # padding of the random crops where the setting has them
TUNING = "grid-cnn-40ep-n40-crop"


def base() -> TrainConfig:
    """The converged regime's recipe (``bench.LONG_CROP_CONFIG``: 5,000 images, batch 128, Nesterov SGD at
    lr 0.02, weight decay 5e-4, precise-BN evaluation, one thread) with the grid's validation split and
    the test set every 10 epochs; each setting sets model, length, warm-up, noise and crops."""
    from flatsam.train.bench import LONG_CROP_CONFIG

    return LONG_CROP_CONFIG.replace(val_fraction=0.1, eval_every=10)


#: The candidates, each planned for SGD's wall-clock; fixed with the grid. Options of a candidate may be
#: tuned on the tuning setting only (then frozen in its preset before any held-out setting runs).
CANDIDATES: tuple[tuple[str, str], ...] = (
    ("ausam-halfrho", "ausam-halfrho"),  # flatsam's current recommendation (AUSAM at ρ 0.05)
    ("uniform-halfrho", "uniform:rho=0.05"),  # uniform half batch at the same ρ: the control
    ("ausam-mix", "ausam-mix"),  # ADLP mixed with uniform draws (ours)
    ("ausam-lowloss", "ausam-lowloss"),  # ADLP among the rows of lowest recorded loss (ours)
    ("ausam-late", "ausam-late"),  # kept fraction 0.3 -> 0.7 over the run, mean 0.5 (ours)
    ("saf", "saf"),  # SAF (Du et al., NeurIPS 2022), the authors' defaults
    ("mesa", "mesa"),  # MESA (the same paper), the authors' defaults
    # MESA with its EMA decay scaled to 4 epochs of these runs, as the recorded suites do (bench.py,
    # trajectory_methods): 36 steps per epoch (4,500 training images, batch 128)
    ("mesa-ema4ep", f"mesa:decay={1 - 1 / (4 * 36):g}"),
)


@dataclass(frozen=True)
class Setting:
    """One setting of the grid: a level of each factor."""

    model: str
    epochs: int
    noise: float
    crops: bool

    @property
    def name(self) -> str:
        crop = "-crop" if self.crops else ""
        return f"grid-{self.model}-{self.epochs}ep-n{round(100 * self.noise)}{crop}"

    @property
    def tuning(self) -> bool:
        return self.name == TUNING

    def config(self) -> TrainConfig:
        return base().replace(
            model=self.model,
            epochs=self.epochs,
            lr_warmup_epochs=self.epochs / 10,
            label_noise=self.noise,
            crop_padding=CROP if self.crops else 0,
        )


def half_fraction() -> list[Setting]:
    """The eight settings: every combination of model, length and noise, crops on where the product of
    their ±1 codes (first level −1) is +1."""
    settings = []
    for model, epochs, noise in itertools.product(MODELS, LENGTHS, NOISES):
        code = (
            (1 if model == MODELS[1] else -1)
            * (1 if epochs == LENGTHS[1] else -1)
            * (1 if noise == NOISES[1] else -1)
        )
        settings.append(Setting(model, epochs, noise, code == 1))
    return settings


SETTINGS = half_fraction()
SUITE_NAMES = tuple(s.name for s in SETTINGS)


#: Seconds per epoch of one seed of a setting (SGD, SAM and the eight candidates, with the evaluation),
#: from the one-epoch probe of bench/README ("Estimated CPU time"); for ordering the queue only.
SECONDS_PER_EPOCH = {"cnn": 37.0, "resnet8": 80.0}


def held_out_queue() -> list[str]:
    """The held-out settings, longest first (the estimate; crops before none on a tie), so that two
    workers serving the queue end close together: ``make grid`` runs them in this order."""
    held = [s for s in SETTINGS if not s.tuning]
    held.sort(key=lambda s: (-SECONDS_PER_EPOCH[s.model] * s.epochs, not s.crops))
    return [s.name for s in held]


def planned(label: str, spec: str, sgd_epochs: int) -> str:
    """``spec`` as a bench method spec planned for the wall-clock of SGD's ``sgd_epochs``."""
    from flatsam.train.bench import equal_time_epochs

    epochs = equal_time_epochs(sgd_epochs)
    name, _, options = spec.partition(":")
    extra = f"train.epochs={epochs},train.lr_warmup_epochs={epochs / 10:g}"
    return f"{label}-{epochs}ep={name}:{options + ',' if options else ''}{extra}"


def methods(setting: Setting) -> tuple[str, ...]:
    """SGD and SAM at the setting's length, then every candidate planned for SGD's wall-clock."""
    return ("sgd", "sam", *(planned(label, spec, setting.epochs) for label, spec in CANDIDATES))


def suites() -> dict[str, Any]:
    """The grid's suites for ``flatsam bench --suite NAME`` (``flatsam.train.bench.Suite``)."""
    from flatsam.train.bench import Suite

    out = {}
    for s in SETTINGS:
        role = "the TUNING setting" if s.tuning else "held out"
        crops = f"random crops ({CROP}-pixel padding)" if s.crops else "no crops"
        out[s.name] = Suite(
            f"the robust-promise grid, {role}: {s.model}, {s.epochs} epochs, {round(100 * s.noise)} % label "
            f"noise, {crops}; 4,500 training + 500 validation images; SGD, SAM and the candidates planned "
            "for SGD's wall-clock, 3 seeds (bench/README, 'The grid')",
            s.config(),
            methods(s),
        )
    return out


if __name__ == "__main__":  # ``python -m flatsam.train.grid``: the held-out queue, one name per line
    print(*held_out_queue(), sep="\n")
