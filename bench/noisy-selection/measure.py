"""How often AUSAM's ADLP sampling draws a mislabelled row.

Re-runs one recorded benchmark run (its ``config.json``) with the sampler's ``plan`` wrapped to count,
per epoch, the drawn rows whose training label was flipped by the label noise. A uniform draw's
expectation is the noise rate. The wrapper only reads the plan, so training is unchanged: the final
accuracy printed at the end must equal the recorded run's.

    python bench/noisy-selection/measure.py bench/long-n30-crop-150ep/runs/ausam-halfrho-143ep-s0 \
        bench/noisy-selection

``--method SPEC`` trains another method (any that draws rows: AUSAM, the robust candidates ausam-mix and
ausam-lowloss, uniform) on the recorded run's setting, ``--epochs N`` shortens the run (its warm-up kept
at the same fraction); either makes it a new run, so there is no recorded accuracy to compare with.

    python bench/noisy-selection/measure.py bench/long-n30-crop/runs/ausam-halfrho-95ep-s0 /tmp/mix \
        --method ausam-mix --epochs 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from flatsam.train.config import MethodSpec, TrainConfig  # noqa: E402
from flatsam.train.loop import Run  # noqa: E402
from flatsam.train.records import read_json  # noqa: E402


def rerun_config(
    recorded: Path, out: Path, method: str | None = None, epochs: int | None = None
) -> TrainConfig:
    """The recorded run's configuration, written to ``out/run``, with another method and/or length."""
    values = {**read_json(recorded / "config.json")["config"], "run_dir": str(out / "run")}
    if method is not None:
        spec = MethodSpec.parse(method)
        values.update(method=spec.name, method_options=spec.options, label=spec.label)
    if epochs is not None:
        warmup = values.get("lr_warmup_epochs", 0.0) * epochs / values.get("epochs", epochs)
        values.update(epochs=epochs, lr_warmup_epochs=warmup)
    return TrainConfig.from_dict(values)


def measure(recorded: Path, out: Path, method: str | None = None, epochs: int | None = None) -> dict:
    config = rerun_config(recorded, out, method, epochs)
    run = Run(config, overwrite=True, progress=False, keep_checkpoint=False)
    sampler = run.setup.optimizer.selection
    if not sampler.selects_rows:
        run.close()
        raise ValueError(f"{config.method} draws no rows: measure a method that samples rows (AUSAM, ...)")
    noisy = torch.zeros(len(run.setup.train_y), dtype=torch.bool)
    noisy[run.setup.data.noisy_indices] = True
    counts: dict[int, list[int]] = {}  # epoch -> [noisy rows drawn, rows drawn]

    plan = sampler.plan

    def counting_plan(ctx, scores=None):
        result = plan(ctx, scores)
        drawn = noisy[ctx.index[result.descent].cpu()]
        tally = counts.setdefault(ctx.epoch, [0, 0])
        tally[0] += int(drawn.sum())
        tally[1] += len(drawn)
        return result

    sampler.plan = counting_plan
    result = run.run()
    same = method is None and epochs is None
    summary = {
        "recorded_run": str(recorded),
        "method": config.label or config.method,
        "epochs": config.epochs,
        "noise_rate": float(noisy.float().mean()),
        "final_test_acc": result["final_test_acc"],
        "recorded_final_test_acc": read_json(recorded / "result.json")["final_test_acc"] if same else None,
    }
    if hasattr(sampler, "adlp"):
        adlp = sampler.adlp.cpu()
        summary.update(adlp_mean_noisy=float(adlp[noisy].mean()), adlp_mean_clean=float(adlp[~noisy].mean()))
    summary.update(
        {
            "drawn_rows_by_epoch": {epoch: total for epoch, (_, total) in sorted(counts.items())},
            "noisy_share_by_epoch": {epoch: n / total for epoch, (n, total) in sorted(counts.items())},
        }
    )
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    epochs = list(summary["noisy_share_by_epoch"])
    shares = [100 * s for s in summary["noisy_share_by_epoch"].values()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, shares, label=summary["method"])
    ax.axhline(100 * summary["noise_rate"], color="grey", linestyle="--", label="uniform draw (noise rate)")
    ax.set(xlabel="epoch", ylabel="mislabelled rows among drawn rows (%)")
    ax.set_title(config.label or config.method)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "noisy_share.png", dpi=120)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="how often a row-sampling method draws a mislabelled row")
    parser.add_argument("recorded", type=Path, help="a recorded run folder (its config.json is re-run)")
    parser.add_argument("out", type=Path, help="output folder (results.json, noisy_share.png, run/)")
    parser.add_argument("--method", help="another method spec to train on the recorded setting")
    parser.add_argument("--epochs", type=int, help="a shorter run (a short check)")
    args = parser.parse_args()
    summary = measure(args.recorded, args.out, args.method, args.epochs)
    share = summary.pop("noisy_share_by_epoch")
    summary.pop("drawn_rows_by_epoch")
    print(json.dumps(summary, indent=1))
    print("noisy share, every 10th epoch:", {e: round(s, 3) for e, s in share.items() if e % 10 == 0})
