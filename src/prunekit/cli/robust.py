"""``prunekit robust backdoor | unlearn``: backdoor removal by pruning (FMP, fine-pruning) and unlearning through
sparsity, each writing ``OUT/metrics.json`` and a row in the results store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from . import common as c

app = c.app_group("Pruning for robustness: backdoor defenses and machine unlearning.")
DATASETS = ("mnist1d", "digits")
NUM_CLASSES = {"mnist1d": 10, "digits": 10}
DEFAULT_MODELS = {"mnist1d": "cnn1d", "digits": "lenet5"}
ATTACKS = ("badnets", "blended")
DEFENSES = ("none", "finetune", "fine-pruning", "fmp", "anp")
UNLEARNERS = ("retrain", "finetune", "grad-ascent", "l1-sparse")
PRUNE_BY = ("remove", "mask")
FMP_RULES = ("progressive", "fraction")
FMP_OBJECTIVES = ("feature", "loss")


def register(main: typer.Typer) -> None:
    """Add the ``robust`` group to ``main``."""
    c.command(app, "backdoor")(backdoor)
    c.command(app, "unlearn")(unlearn)
    main.add_typer(app, name="robust", help="Backdoor defenses (FMP, fine-pruning) and unlearning through sparsity.")


def _open_fraction(flag: str) -> Any:
    def check(value: float | None) -> float | None:
        if value is not None and not 0.0 < value < 1.0:
            raise typer.BadParameter(f"{flag} must be a fraction in (0, 1); got {value!r}")
        return value

    return check


def _unit_fraction(flag: str) -> Any:
    def check(value: float | None) -> float | None:
        if value is not None and not 0.0 < value <= 1.0:
            raise typer.BadParameter(f"{flag} must be a fraction in (0, 1]; got {value!r}")
        return value

    return check


def _positive(flag: str, low: int = 1) -> Any:
    def check(value: int | None) -> int | None:
        if value is not None and value < low:
            raise typer.BadParameter(f"{flag} must be an integer >= {low}; got {value!r}")
        return value

    return check


DatasetOpt = Annotated[str, typer.Option("--dataset", help="mnist1d | digits",
                                         callback=c.choice("--dataset", DATASETS))]
ModelOpt = Annotated[str | None, typer.Option("--model", help="zoo model (default: cnn1d for mnist1d, lenet5 for "
                                              "digits)")]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="training epochs of the original model (default: "
                                               "the zoo recipe's)", callback=_positive("--epochs"))]


def backdoor(
    out: c.Out,
    dataset: DatasetOpt = "mnist1d",
    model: ModelOpt = None,
    attack: Annotated[str, typer.Option(help="badnets (a stamped window / corner patch) | blended (a random "
                                        "pattern mixed in)", callback=c.choice("--attack", ATTACKS))] = "badnets",
    poison: Annotated[float, typer.Option("--poison", help="poison rate: fraction of the training set "
                                          "poisoned, in (0, 1)", callback=_open_fraction("--poison"))] = 0.05,
    target: Annotated[int, typer.Option(help="the attack's target label")] = 0,
    defense: Annotated[str, typer.Option(help="none | finetune | fine-pruning | fmp | anp",
                                         callback=c.choice("--defense", DEFENSES))] = "fmp",
    clean_fraction: Annotated[float, typer.Option(help="the defender's clean data, a fraction of the training set "
                                                  "(at least one example per class)",
                                                  callback=_unit_fraction("--clean-fraction"))] = 0.05,
    prune_by: Annotated[str, typer.Option(help="mask (zeros, shapes kept) | remove (real removal, structured "
                                          "engine)", callback=c.choice("--prune-by", PRUNE_BY))] = "mask",
    epochs: EpochsOpt = None,
    finetune_epochs: Annotated[int, typer.Option(help="clean fine-tuning epochs of the defense",
                                                 callback=_positive("--finetune-epochs", 0))] = 10,
    finetune_lr: Annotated[float, typer.Option(help="clean fine-tuning learning rate")] = 0.003,
    fmp_eps: Annotated[float, typer.Option(help="FMP perturbation budget, a fraction of the input range")] = 0.06,
    fmp_alpha: Annotated[float, typer.Option(help="FMP step size, a fraction of the input range")] = 0.02,
    fmp_steps: Annotated[int, typer.Option(help="FMP steps (1 = FGSM, more = PGD)",
                                           callback=_positive("--fmp-steps"))] = 1,
    fmp_fraction: Annotated[float, typer.Option(help="FMP: fraction of each layer's feature maps pruned (rule "
                                                "fraction) or at most pruned (rule progressive)",
                                                callback=_open_fraction("--fmp-fraction"))] = 0.1,
    fmp_rule: Annotated[str, typer.Option(help="progressive (prune in FMP's order while the held-out clean accuracy "
                                          "stays within --fmp-max-drop) | fraction (a fixed fraction per layer)",
                                          callback=c.choice("--fmp-rule", FMP_RULES))] = "progressive",
    fmp_max_drop: Annotated[float, typer.Option(help="FMP progressive rule: held-out clean accuracy the pruning "
                                                "may cost, in [0, 1)")] = 0.1,
    fmp_objective: Annotated[str, typer.Option(help="feature (perturb the input to move one map: the released "
                                               "code) | loss (ascend the loss through one map)",
                                               callback=c.choice("--fmp-objective", FMP_OBJECTIVES))] = "feature",
    holdout: Annotated[float, typer.Option(help="part of the clean set the pruning stop rules read (and early "
                                           "stopping), in [0, 1); 0 = the whole clean set")] = 0.25,
    early_stop: Annotated[bool, typer.Option(help="fine-tune on the rest of the clean set and keep the epoch with "
                                             "the best held-out accuracy")] = False,
    width: Annotated[int | None, typer.Option(help="feature maps per convolution (cnn1d only; default the zoo's 25)",
                                              callback=_positive("--width"))] = None,
    anp_iterations: Annotated[int, typer.Option(help="ANP mask-optimisation iterations (the paper: 2000)",
                                                callback=_positive("--anp-iterations"))] = 2000,
    trigger_size: Annotated[int | None, typer.Option(help="badnets window length / patch side (default 5 / 3)",
                                                     callback=_positive("--trigger-size"))] = None,
    blend_alpha: Annotated[float | None, typer.Option(help="blended trigger opacity in (0, 1] (default 0.2 on "
                                                      "mnist1d, 0.4 on digits)",
                                                      callback=_unit_fraction("--blend-alpha"))] = None,
    seed: c.Seed = 0,
    threads: c.Threads = None,
    db: c.Db = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Poison a data set, train a model on it, defend it with a small clean set; ASR, RA, clean accuracy."""
    if not 0 <= target < NUM_CLASSES[dataset]:
        raise ValueError(f"--target must be a class label in 0..{NUM_CLASSES[dataset] - 1} for {dataset}, "
                         f"got {target}")
    if not 0.0 <= fmp_max_drop < 1.0:
        raise ValueError(f"--fmp-max-drop must be in [0, 1), got {fmp_max_drop}")
    if not 0.0 <= holdout < 1.0 or (early_stop and holdout == 0):
        raise ValueError(f"--holdout must be in [0, 1) (and > 0 with --early-stop), got {holdout}")
    if width is not None and (model or DEFAULT_MODELS[dataset]) != "cnn1d":
        raise ValueError(f"--width is only defined for --model cnn1d, not {model or DEFAULT_MODELS[dataset]}")
    c.check_out(out, overwrite=overwrite)
    c.set_threads(threads)
    from ..robust.anp import ANPConfig
    from ..robust.backdoor import BackdoorConfig, run_backdoor
    from ..robust.defenses import DefenseConfig
    from ..robust.fmp import FMPConfig

    dcfg = DefenseConfig(finetune_epochs=finetune_epochs, lr=finetune_lr, prune_by=prune_by, holdout=holdout,
                         early_stop=early_stop,
                         fmp=FMPConfig(eps=fmp_eps, alpha=fmp_alpha, steps=fmp_steps, prune_fraction=fmp_fraction,
                                       rule=fmp_rule, max_drop=fmp_max_drop, objective=fmp_objective),
                         anp=ANPConfig(iterations=anp_iterations))
    cfg = BackdoorConfig(dataset=dataset, model=model, attack=attack, poison=poison, target=target, defense=defense,
                         clean_fraction=clean_fraction, seed=seed, epochs=epochs, trigger_size=trigger_size,
                         alpha=blend_alpha, width=width, defense_config=dcfg)
    c.say(f"backdoor: {attack} at {poison:g} on {dataset}, defense {defense}")
    metrics = run_backdoor(cfg)
    _finish(out, overwrite, db, "robust-backdoor", cfg.to_dict(), metrics,
            ("clean_acc_before", "clean_acc_after", "asr_before", "asr_after", "ra_before", "ra_after"))


def check_forget(spec: str, num_classes: int) -> None:
    """``--forget`` is ``class:K`` with K a class or ``random:F`` with F in (0, 1) (checked before any work)."""
    kind, sep, arg = spec.partition(":")
    try:
        ok = sep and ((kind == "class" and 0 <= int(arg) < num_classes) or (kind == "random" and 0 < float(arg) < 1))
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"--forget must be class:K (K in 0..{num_classes - 1}: the class must exist) or random:F "
                         f"(F in (0, 1)), got {spec!r}")


def unlearn(
    out: c.Out,
    dataset: DatasetOpt = "mnist1d",
    model: ModelOpt = None,
    forget: Annotated[str, typer.Option(help="class:K (forget class K) | random:F (forget a random fraction F of "
                                        "the training set)")] = "class:3",
    method: Annotated[str, typer.Option(help="retrain | finetune | grad-ascent | l1-sparse",
                                        callback=c.choice("--method", UNLEARNERS))] = "finetune",
    sparsity: c.Sparsity = None,
    epochs: EpochsOpt = None,
    unlearn_epochs: Annotated[int, typer.Option(help="finetune / l1-sparse epochs on the retained data",
                                                callback=_positive("--unlearn-epochs"))] = 10,
    lr: Annotated[float, typer.Option(help="finetune / l1-sparse learning rate")] = 0.01,
    ga_epochs: Annotated[int, typer.Option(help="grad-ascent epochs on the forget set",
                                           callback=_positive("--ga-epochs"))] = 5,
    ga_lr: Annotated[float, typer.Option(help="grad-ascent learning rate")] = 1e-3,
    gamma: Annotated[float, typer.Option(help="l1-sparse: initial L1 weight (decays linearly to 0)")] = 5e-3,
    recover_epochs: Annotated[int, typer.Option(help="with --sparsity: epochs of fine-tuning on the whole training "
                                                "set after pruning, before unlearning",
                                                callback=_positive("--recover-epochs"))] = 5,
    seed: c.Seed = 0,
    threads: c.Threads = None,
    db: c.Db = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Train on the full data, prune one-shot (--sparsity), unlearn the forget set; compare with retraining."""
    check_forget(forget, NUM_CLASSES[dataset])
    if not (lr > 0 and ga_lr > 0 and gamma >= 0):
        raise ValueError(f"--lr and --ga-lr must be > 0 and --gamma >= 0, got {lr}, {ga_lr}, {gamma}")
    c.check_out(out, overwrite=overwrite)
    c.set_threads(threads)
    from ..robust.unlearn import UnlearnConfig, run_unlearn

    cfg = UnlearnConfig(dataset=dataset, model=model, forget=forget, method=method, sparsity=sparsity or 0.0,
                        seed=seed, epochs=epochs, unlearn_epochs=unlearn_epochs, lr=lr, ga_epochs=ga_epochs,
                        ga_lr=ga_lr, gamma=gamma, recover_epochs=recover_epochs)
    c.say(f"unlearn: {forget} from {dataset} by {method} at sparsity {cfg.sparsity:g}")
    metrics = run_unlearn(cfg)
    _finish(out, overwrite, db, "robust-unlearn", cfg.to_dict(), metrics,
            ("forget_acc", "retain_acc", "test_acc", "mia_efficacy", "gap_to_retrain", "seconds"))


def _finish(out: Path, overwrite: bool, db: Path | None, experiment: str, config: dict[str, Any],
            metrics: dict[str, Any], shown: tuple[str, ...]) -> None:
    """Write ``OUT/metrics.json`` (atomically, with the config), print the headline figures, record the run."""
    import json

    from ..io import atomic_dir, write_json
    from .prune import record

    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json(tmp / "metrics.json", {**metrics, "config": config})
    typer.echo(json.dumps({k: round(metrics[k], 4) for k in shown}))
    typer.echo(f"metrics written to {out / 'metrics.json'}")
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    record(db, out, experiment, config, "model", scalars)
