"""How an evaluation reads: the summary table (each value beside the reference it should be compared with) and
the figure of the prediction curves (MSE, PSNR, SSIM and the digits' identity per future step).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.benchmark import table_rows
from evaluation.metrics import FRAME_METRICS

ANSWERS = {"": "pose LSTM", "true_pose_": "decoder on true poses", "copy_last_": "copy last frame"}
IDENTITY_CURVES = {"identity": "pose LSTM", "true_pose_identity": "decoder on true poses",
                   "ground_truth_identity": "true frames"}
IDENTITY_STEPS = (1, 10, 50, 100)  # the identity rows of the summary (with the last step)


def plot_prediction_curves(prediction: dict[str, list[float]], path: Path) -> None:
    """Save MSE, PSNR and SSIM per future step: the LSTM, the decoder on true poses, copying the last frame;
    and the digits' identity when measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(FRAME_METRICS) + ("identity" in prediction)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    steps = np.arange(1, len(prediction["mse"]) + 1)
    if "identity" in prediction:
        for (key, label), style in zip(IDENTITY_CURVES.items(), ("-", ":", "--"), strict=True):
            axes[-1].plot(steps, prediction[key], label=label, linestyle=style)
        axes[-1].set(title="frames read as the clip's digits", xlabel="future step", ylim=(0, 1.02))
        axes[-1].legend(fontsize=7)
    for ax, name in zip(axes, FRAME_METRICS, strict=False):
        for (prefix, label), style in zip(ANSWERS.items(), ("-", ":", "--"), strict=True):
            ax.plot(steps, prediction[prefix + name], label=label, linestyle=style)
        ax.set_title(name.upper())
        ax.set_xlabel("future step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(results: dict) -> str:
    """The metrics as a readable text table: value, and the reference it should be compared with."""
    rows = []

    def add(part: str, what: str, value: float, reference: str = "") -> None:
        rows.append(f"{part:<15}{what:<38}{value:>10.4f}  {reference}")

    if "swap" in results:  # first: the one number that tells whether the decoder uses the content
        swap = results["swap"]
        add("swap", "content transfer", swap["content_transfer"],
            "1 - MSE / MSE with other clip's content; 0: content unused")
        add("swap", "MSE to true swap, A's content", swap["swap_mse"],
            f"other clip's content: {swap['swap_mse_other_content']:.4f}, mean content: "
            f"{swap['swap_mse_mean_content']:.4f}, B's frame: {swap['swap_mse_pose_frame']:.4f}")
        if "swap_identity" in swap:
            add("swap", "read as A's digits (identity)", swap["swap_identity"],
                f"other clip's content: {swap['swap_identity_other_content']:.4f}, as B's digits: "
                f"{swap['swap_identity_pose_donor']:.4f}, true swap: {swap['swap_identity_truth']:.4f}")
    if "identity_classifier" in results:
        add("identity", "classifier accuracy, test digits", results["identity_classifier"]["test_accuracy"],
            f"trained on {results['identity_classifier']['trained_on']} only")
    content = results["content"]
    add("content", "invariance ratio", content["invariance_ratio"], "within-clip share; 0 ideal, 1 none")
    add("content", "spread (std across clips)", content["spread"], "not scale-free: shrinks with the scale")
    if "bn_scale" in content:
        add("content", "head BatchNorm mean |gamma|", content["bn_scale"], "initialised at 1")
    rec = results["reconstruction"]
    add("reconstruction", "MSE", rec["mse"], f"copy x_t: {rec['copy_content_frame_mse']:.4f}")
    add("reconstruction", "PSNR (dB)", rec["psnr"])
    add("reconstruction", "SSIM", rec["ssim"])
    leakage = results["leakage"]

    def versus_positions(key: str) -> str:
        position_only = leakage.get(f"position_only_discriminator_{key}")
        return "chance 0.5" if position_only is None else f"positions only: {position_only:.4f}, chance 0.5"

    add("leakage", "trained discriminator accuracy", leakage["trained_discriminator_accuracy"],
        versus_positions("accuracy"))
    add("leakage", "fresh discriminator accuracy", leakage["fresh_discriminator_accuracy"],
        versus_positions("accuracy"))
    add("leakage", "fresh discriminator train accuracy", leakage["fresh_discriminator_train_accuracy"],
        versus_positions("train_accuracy"))
    for name, value in results.get("probes", {}).items():
        if not name.endswith("_chance"):
            label = name.rsplit("_from_", 1)[0]
            chance = results["probes"].get(f"{label}_chance")
            add("probes", name.replace("_", " "), value, f"chance {chance:.4f}" if chance is not None else "")
    prediction = results.get("prediction", {})
    n_steps = len(prediction.get("mse", []))
    for step in sorted({1, 10, n_steps} & set(range(1, n_steps + 1))):
        for name in FRAME_METRICS:
            add("prediction", f"{name.upper()} at step {step}", prediction[name][step - 1],
                f"true poses: {prediction['true_pose_' + name][step - 1]:.4f}, "
                f"copy last: {prediction['copy_last_' + name][step - 1]:.4f}")
    if "identity" in prediction:
        for step in sorted({*IDENTITY_STEPS, n_steps} & set(range(1, n_steps + 1))):
            add("prediction", f"identity at step {step}", prediction["identity"][step - 1],
                f"true poses: {prediction['true_pose_identity'][step - 1]:.4f}, "
                f"true frames: {prediction['ground_truth_identity'][step - 1]:.4f}")
    benchmark = results.get("benchmark", {})
    for what, value, reference in table_rows(benchmark):
        add("benchmark", what, value, reference)
    stage = {"drnet": "DRNET", "lstm": "pose-LSTM"}[results["kind"]]
    head = (f"DRNET evaluation of {results['checkpoint']} ({stage} stage, iteration {results['iteration']}; "
            f"{results['dataset']}, seed {results['seed']}; clips per part: " + ", ".join(
                [f"{part} {results['eval_clips']}" for part in ("swap", "content", "reconstruction", "leakage",
                                                                "probes") if part in results]
                + [f"prediction {results['prediction_clips']}"] * ("prediction" in results)
                + [f"{part} {scores['clips']}" for part, scores in benchmark.items() if part != "skipped"]) + ")")
    skipped = [f"skipped {part}: {why}" for part, why in results["skipped"].items()]
    skipped += [f"skipped benchmark {part}: {why}" for part, why in benchmark.get("skipped", {}).items()]
    return "\n".join([head, f"{'part':<15}{'metric':<38}{'value':>10}  reference", *rows, *skipped])
