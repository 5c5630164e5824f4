"""`abaw train-heads` and `abaw finetune`."""

from __future__ import annotations

import sys

import click

from abaw.commands.options import echo_result, json_option, parse_task_weights, parse_task_windows, parse_tasks, split_paths


@click.command("train-heads")
@click.option("--config", "config_file", metavar="FILE|RECIPE",
              help="Settings file: YAML/JSON of training settings, or a search space (its base + the first "
                   "value of each grid entry), or a shipped recipe's name (`abaw recipes`), e.g. abaw7-winner. "
                   "Flags given explicitly override it.")
@click.option("--write-default-config", "write_config", type=click.Path(dir_okay=False),
              help="Write the settings (defaults, plus --config and the flags given) to this YAML file and exit.")
@click.option("--cache", type=click.Path(exists=True, file_okay=False),
              help="Feature cache (Zarr store) written by `abaw extract`.  [required]")
@click.option("--data", type=click.Path(exists=True, file_okay=False),
              help="Dataset root: --train-ann/--val-ann default to its training_/validation_set_annotations.txt.")
@click.option("--train-ann", type=click.Path(exists=True, dir_okay=False), help="Training annotation file.")
@click.option("--val-ann", type=click.Path(exists=True, dir_okay=False), help="Validation annotation file.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory to write.  [required]")
@click.option("--backbone", "backbones", multiple=True,
              help="Backbone features to use, by cache key or spec (repeat). Default: all in the cache.")
@click.option("--tasks", default="va,expr,au", show_default=True,
              help="Tasks trained jointly (subset of va,expr,au; v or a: valence or arousal alone, e.g. au,v).")
@click.option("--arch", default="multitask", show_default=True,
              help="Head architecture: multitask (fusion + temporal module + heads) | linear (HSEmotion's recipe: "
                   "standardised features, a linear layer per task, no temporal context).")
@click.option("--fusion", default="sum", show_default=True, help="Feature Fusion Module: sum | concat | attention | ffm (the ABAW7 winner's: equal widths).")
@click.option("--temporal", default="transformer", show_default=True,
              help="Temporal Convergence Module: none | transformer | tcn | gru | lstm.")
@click.option("--d-model", default=256, show_default=True, help="Model width after the projections.")
@click.option("--layers", default=2, show_default=True, help="Temporal layers (transformer/rnn layers, tcn blocks).")
@click.option("--heads", default=4, show_default=True, help="Attention heads (transformer).")
@click.option("--ff-mult", default=2, show_default=True, help="Transformer feed-forward width / d_model.")
@click.option("--kernel", default=3, show_default=True, help="TCN kernel size.")
@click.option("--causal/--no-causal", default=False, show_default=True,
              help="Causal temporal context (online use): no look-ahead; with lstm/gru: unidirectional.")
@click.option("--posenc/--no-posenc", default=True, show_default=True,
              help="Transformer: sinusoidal position codes (the ABAW7 winner: none).")
@click.option("--task-windows", default="0,0,0", show_default=True,
              help="Temporal context per task in chunks of N frames, va,expr,au or va=30,expr=5,au=1 (0: whole window).")
@click.option("--dropout", default=0.1, show_default=True)
@click.option("--window", default=32, show_default=True, help="Frames per sequence window.")
@click.option("--stride", type=int, default=None, help="Step between training windows [default: window].")
@click.option("--max-gap", default="30", show_default=True,
              help="More missing frame numbers than this between two frames start a new sequence ('none': never).")
@click.option("--context", type=click.Choice(["labelled", "dense"]), default="labelled", show_default=True,
              help="Windows over the labelled frames, or over every cached frame of their videos (dense: "
                   "extract every frame first; losses use the labelled ones only).")
@click.option("--task-weights", default="1,1,1", show_default=True, help="Loss weights va,expr,au (or va=1,au=2).")
@click.option("--au-pos-weight", type=click.Choice(["none", "auto", "balanced"]), default="auto", show_default=True,
              help="BCE positive weights per AU (auto: negatives/positives clipped to 20; balanced: unclipped).")
@click.option("--expr-class-weight", type=click.Choice(["none", "inverse"]), default="inverse", show_default=True,
              help="EXPR cross-entropy class weights.")
@click.option("--va-loss", type=click.Choice(["mean", "sum"]), default="mean", show_default=True,
              help="(1 - CCC) of valence and arousal averaged, or summed (the ABAW7 winner).")
@click.option("--lr", default=5e-4, show_default=True, help="Peak AdamW learning rate.")
@click.option("--weight-decay", default=0.05, show_default=True)
@click.option("--epochs", default=20, show_default=True,
              help="Maximum epochs (evaluation rounds; a short pass over the data is repeated to reach --min-steps).")
@click.option("--min-steps", default=1000, show_default=True,
              help="Optimizer steps at least, spread evenly over the epochs (0: one pass per epoch).")
@click.option("--batch-frames", default=256, show_default=True, help="Frames per batch.")
@click.option("--warmup", "warmup_epochs", default=1.0, show_default=True, help="Linear warm-up, in epochs.")
@click.option("--patience", default=5, show_default=True,
              help="Early stopping: epochs without a better validation score (of any task, with --select task).")
@click.option("--select", type=click.Choice(["total", "task"]), default="total", show_default=True,
              help="One best epoch for all tasks by validation P_MTL, or one per task (each task predicted by the "
                   "weights of its own best validation epoch).")
@click.option("--grad-clip", default=1.0, show_default=True, help="Max gradient norm (0: off).")
@click.option("--solver", type=click.Choice(["adam", "lbfgs"]), default="adam", show_default=True,
              help="adam: mini-batch AdamW over epochs; lbfgs: the linear head (--arch linear) fitted on every "
                   "training frame at once to convergence, L2-penalised (no epochs, no early stopping).")
@click.option("--lbfgs-c", default=0.1, show_default=True,
              help="--solver lbfgs: inverse L2 strength, as scikit-learn's C.")
@click.option("--lbfgs-iters", default=500, show_default=True, help="--solver lbfgs: iterations at most per task.")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--threads", default=0, show_default=True, help="CPU threads for torch (0: torch's default).")
@click.option("--init-from", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Initialise from finished runs (e.g. single-task runs): projections, fusion, temporal, heads.")
@click.option("--thresholds/--no-thresholds", "au_thresholds", default=True, show_default=True,
              help="Fit per-AU decision thresholds on validation.")
@click.option("--smoothing/--no-smoothing", default=True, show_default=True,
              help="Fit per-task temporal smoothing windows on validation.")
@click.option("--kernels", "smooth_kernels", default="box,gaussian,median", show_default=True,
              help="Smoothing kernels the fit may choose per task (comma-separated).")
@click.option("--honest-folds", default=5, show_default=True,
              help="Validation videos in this many folds for the honest (cross-fitted) estimate (0: off).")
@click.option("--allow-missing", is_flag=True, help="Skip (and report) labelled frames without a cached feature.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out (same config).")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
@json_option
@click.pass_context
def train_heads(ctx: click.Context, config_file: str | None, write_config: str | None, cache: str | None,
                data: str | None, train_ann: str | None, val_ann: str | None, out: str | None,
                backbones: tuple[str, ...], tasks: str, max_gap: str, task_weights: str, task_windows: str,
                init_from: tuple[str, ...], resume: bool, overwrite: bool, quiet: bool, json_out: str | None,
                **opts) -> None:
    """Train fusion + temporal module + AU/EXPR/VA heads jointly from cached features.

    Selects the best epoch on validation P_MTL (or one per task: --select task), then fits
    per-AU thresholds and temporal smoothing on validation and reports P_MTL before and
    after each step, and the honest
    estimate (epoch and post-processing fitted on other validation videos than those scored).

    Example: abaw train-heads --cache cache.zarr --data data/synth --out runs/joint
    """
    from abaw.data.annotations import read_annotations
    from abaw.pipeline.train import TrainConfig, train
    from abaw.pipeline.train.settings import read_settings, resolve, write_settings

    try:
        gap = None if max_gap.lower() == "none" else int(max_gap)
    except ValueError:
        raise click.BadParameter(f"{max_gap!r}: a number of frames or 'none'", param_hint="--max-gap") from None
    opts["smooth_kernels"] = tuple(k.strip() for k in opts["smooth_kernels"].split(",") if k.strip())
    flags = TrainConfig.create(backbones=backbones, tasks=parse_tasks(tasks), max_gap=gap,
                               task_weights=parse_task_weights(task_weights),
                               task_windows=parse_task_windows(task_windows), init_from=init_from, **opts).flat()
    explicit = {k: flags[k] for k in ctx.params
                if k in flags and ctx.get_parameter_source(k) is click.core.ParameterSource.COMMANDLINE}
    if config_file:
        from abaw.recipes import find_recipe

        config_file = str(find_recipe(config_file))
    file_settings, notes = read_settings(config_file) if config_file else ({}, [])
    cfg = resolve(flags, file_settings, explicit, config_file or "train-heads")
    for note in notes:
        click.echo(note, err=True)
    if write_config:
        click.echo(f"wrote {write_settings(write_config, cfg)}")
        return
    if not cache or not out:
        raise click.UsageError("give --cache and --out (or --write-default-config FILE)")
    train_ann, val_ann = split_paths(data, train_ann, val_ann)
    run = train(cfg, cache, read_annotations(train_ann), read_annotations(val_ann), out, resume=resume,
                overwrite=overwrite, progress=not quiet)
    echo_result(run.result, json_out)


@click.command()
@click.option("--task", type=click.Choice(["au", "expr", "va"]), required=True, help="The task to fine-tune for.")
@click.option("--backbone", required=True,
              help="Start spec: timm:<model>[?pretrained=0&size=&norm=...] or ckpt:DIR (an earlier run).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False),
              help="Start weights: .safetensors, or a torch state dict (read with weights_only).")
@click.option("--norm", type=click.Choice(["imagenet", "face", "half"]),
              help="Input normalisation (face: the ABAW7 winner's face mean/std). Default: the model's own.")
@click.option("--size", type=int, help="Input size in pixels (default: the model's own).")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="The cropped_aligned/ folder (<video>/<frame>.jpg).")
@click.option("--train-ann", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Training annotation file.")
@click.option("--val-ann", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Validation annotation file (early stopping, best checkpoint).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder = the checkpoint (ckpt:OUT).")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=64, show_default=True, help="Frames per step and process.")
@click.option("--accum-steps", default=1, show_default=True, help="Gradient accumulation (micro-batches per step).")
@click.option("--lr", default=1e-4, show_default=True, help="Backbone learning rate (top layer under layer decay).")
@click.option("--head-lr", default=1e-3, show_default=True, help="Task-head learning rate.")
@click.option("--layer-decay", type=float, default=None,
              help="Layer-wise LR decay (1 = off). Default: 0.75 for ViTs, off otherwise.")
@click.option("--weight-decay", default=0.05, show_default=True)
@click.option("--warmup-epochs", default=1.0, show_default=True, help="Linear warm-up, then cosine decay.")
@click.option("--min-lr-ratio", default=0.01, show_default=True, help="Cosine floor relative to the peak.")
@click.option("--grad-clip", default=1.0, show_default=True, help="Max gradient norm (0: off).")
@click.option("--drop-path", default=0.1, show_default=True, help="Stochastic depth rate (where supported).")
@click.option("--head-dropout", default=0.0, show_default=True)
@click.option("--label-smoothing", default=0.0, show_default=True, help="EXPR cross-entropy label smoothing.")
@click.option("--class-weights", type=click.Choice(["none", "balanced"]), default="none", show_default=True,
              help="balanced: EXPR inverse class frequency; AU positives weighted by negatives/positives.")
@click.option("--patience", default=3, show_default=True, help="Early stopping: epochs without improvement.")
@click.option("--min-delta", default=0.0, show_default=True, help="Smallest improvement that counts.")
@click.option("--samples-per-epoch", default=0, show_default=True, help="Frames drawn per epoch (0: all).")
@click.option("--augment/--no-augment", default=True, show_default=True, help="Face augmentations.")
@click.option("--flip", default=0.5, show_default=True, help="Horizontal flip probability.")
@click.option("--crop-scale", default=0.8, show_default=True, help="Random resized crop keeps this..1 of the area.")
@click.option("--rotation", default=10.0, show_default=True, help="Max rotation in degrees.")
@click.option("--color-jitter", default=0.3, show_default=True, help="Brightness/contrast/saturation jitter.")
@click.option("--amp/--no-amp", default=True, show_default=True, help="bf16 autocast (CUDA only).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True, help="(CUDA only).")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available).")
@click.option("--workers", default=4, show_default=True, help="Data-loader processes per training process.")
@click.option("--overwrite", is_flag=True, help="Start again even if OUT holds a run (default: resume it).")
@click.option("--progress/--no-progress", default=True, hidden=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@json_option
def finetune(task: str, backbone: str, weights: str | None, norm: str | None, size: int | None, data: str,
             train_ann: str, val_ann: str, out: str, epochs: int, batch_size: int, accum_steps: int, lr: float,
             head_lr: float, layer_decay: float | None, weight_decay: float, warmup_epochs: float,
             min_lr_ratio: float, grad_clip: float, drop_path: float, head_dropout: float, label_smoothing: float,
             class_weights: str, patience: int, min_delta: float, samples_per_epoch: int, augment: bool,
             flip: float, crop_scale: float, rotation: float, color_jitter: float, amp: bool, channels_last: bool,
             seed: int, device: str | None, workers: int, overwrite: bool, progress: bool, quiet: bool,
             json_out: str | None) -> None:
    """Fine-tune a backbone + task head on single face frames (separate training).

    Trains with the task loss (AU: BCE, EXPR: CE, VA: 1 - CCC; invalid labels masked), face
    augmentations, AdamW + cosine schedule, early stopping on the validation metric. OUT
    becomes a backbone for extraction: `abaw extract --backbone ckpt:OUT`. Rerun the same
    command to resume an interrupted run. Multi-GPU: `torchrun --nproc_per_node N -m abaw
    finetune ...`.

    \b
    Example:
      abaw finetune --task expr --backbone timm:vit_base_patch16_224.mae --norm face \\
          --data data/cropped_aligned --train-ann training_set_annotations.txt \\
          --val-ann validation_set_annotations.txt --out runs/expr_vit
    """
    import os

    from abaw.pipeline.finetune.config import AugmentConfig, FinetuneConfig
    from abaw.pipeline.finetune.model import with_options

    spec = with_options(backbone, weights=os.path.abspath(weights) if weights else None, norm=norm,
                        size=None if size is None else str(size))
    aug = AugmentConfig(enabled=augment, flip=flip, crop_scale=(crop_scale, 1.0), rotation=rotation,
                        brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)
    cfg = FinetuneConfig(
        task=task, backbone=spec, data=os.path.abspath(data), train_ann=os.path.abspath(train_ann),
        val_ann=os.path.abspath(val_ann), epochs=epochs, batch_size=batch_size, accum_steps=accum_steps, lr=lr,
        head_lr=head_lr, layer_decay=layer_decay, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        min_lr_ratio=min_lr_ratio, grad_clip=grad_clip, drop_path=drop_path, head_dropout=head_dropout,
        label_smoothing=label_smoothing, class_weights=class_weights, patience=patience, min_delta=min_delta,
        samples_per_epoch=samples_per_epoch, augment=aug, amp=amp, channels_last=channels_last, seed=seed)
    from abaw.pipeline.finetune.train import finetune as run

    main_process = int(os.environ.get("RANK", "0")) == 0
    try:
        s = run(cfg, out, device=device, workers=workers, progress=progress and not quiet, overwrite=overwrite)
    except KeyboardInterrupt:
        if main_process:
            click.echo(f"interrupted; rerun the same command to resume {out} from its last finished epoch", err=True)
        sys.exit(130)
    if not main_process:
        return
    echo_result(s, json_out)
