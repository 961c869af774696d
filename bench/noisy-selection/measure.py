"""How often AUSAM's ADLP sampling draws a mislabelled row.

Re-runs one recorded benchmark run (its ``config.json``) with the sampler's ``plan`` wrapped to count,
per epoch, the drawn rows whose training label was flipped by the label noise. A uniform draw's
expectation is the noise rate. The wrapper only reads the plan, so training is unchanged: the final
accuracy printed at the end must equal the recorded run's.

    python bench/noisy-selection/measure.py bench/long-n30-crop-150ep/runs/ausam-halfrho-143ep-s0 \
        bench/noisy-selection
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from flatsam.train.config import TrainConfig  # noqa: E402
from flatsam.train.loop import Run  # noqa: E402
from flatsam.train.records import read_json  # noqa: E402


def measure(recorded: Path, out: Path) -> dict:
    values = read_json(recorded / "config.json")["config"]
    config = TrainConfig.from_dict({**values, "run_dir": str(out / "run")})
    run = Run(config, overwrite=True, progress=False, keep_checkpoint=False)
    sampler = run.setup.optimizer.selection
    if not hasattr(sampler, "adlp"):
        run.close()
        raise ValueError(f"{config.method} draws no rows by ADLP: measure an AUSAM run")
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
    adlp = sampler.adlp.cpu()
    recorded_acc = read_json(recorded / "result.json")["final_test_acc"]
    summary = {
        "recorded_run": str(recorded),
        "noise_rate": float(noisy.float().mean()),
        "final_test_acc": result["final_test_acc"],
        "recorded_final_test_acc": recorded_acc,
        "adlp_mean_noisy": float(adlp[noisy].mean()),
        "adlp_mean_clean": float(adlp[~noisy].mean()),
        "drawn_rows_by_epoch": {epoch: total for epoch, (_, total) in sorted(counts.items())},
        "noisy_share_by_epoch": {epoch: n / total for epoch, (n, total) in sorted(counts.items())},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    epochs = list(summary["noisy_share_by_epoch"])
    shares = [100 * s for s in summary["noisy_share_by_epoch"].values()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, shares, label="ADLP (AUSAM, ρ 0.05)")
    ax.axhline(100 * summary["noise_rate"], color="grey", linestyle="--", label="uniform draw (noise rate)")
    ax.set(xlabel="epoch", ylabel="mislabelled rows among drawn rows (%)")
    ax.set_title(config.label or config.method)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "noisy_share.png", dpi=120)
    return summary


if __name__ == "__main__":
    summary = measure(Path(sys.argv[1]), Path(sys.argv[2]))
    share = summary.pop("noisy_share_by_epoch")
    summary.pop("drawn_rows_by_epoch")
    print(json.dumps(summary, indent=1))
    print("noisy share, every 10th epoch:", {e: round(s, 3) for e, s in share.items() if e % 10 == 0})
