"""Training-speed benchmark: ``lus bench --model NAME --size N --batch B [--amp]``.

Trains a few hundred steps on random data held on the device and reports images/s and achieved
TFLOP/s. FLOPs of a training step are taken as 3x the forward FLOPs counted by
``torch.utils.flop_counter`` (forward + input gradients + weight gradients), the usual
convention; the counter's own backward count was seen to be 4x forward for these models, which
would inflate the figure. In the same run it trains an eager fp32 baseline of the same model (no
autocast, no channels_last, the default Adam) and reports the speed-up of the configured variant
(on CUDA with the studies' fused Adam and cuDNN's autotuner) over it.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lus_common.config.device import describe_device, resolve_device
from lus_common.config.registry import lookup
from lus_common.models.torch_smp import count_parameters, create_model
from lus_common.training.torch_loop import make_optimizer

# torch.compile's modes: "reduce-overhead" replays the step's kernels as CUDA graphs (fixed shapes,
# static inputs: what the benchmark's device-resident batch is), "max-autotune" also searches
# Triton and cuBLAS/cuDNN choices per kernel (minutes of compiling) and uses CUDA graphs too.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(compile) -> str | None:
    """The ``torch.compile`` mode of a ``compile`` argument: ``False``/``None``/``""`` for none,
    ``True`` for ``"default"``, else one of :data:`COMPILE_MODES`.

    Raises:
        ValueError: an unknown mode, with the known ones.
    """
    if compile is True:
        return "default"
    if not compile:
        return None
    if compile not in COMPILE_MODES:
        raise ValueError(f"Unknown torch.compile mode {compile!r}: use one of {COMPILE_MODES}.")
    return compile


def _step_fn(model, x, y, amp: bool, device: torch.device, fast_optimizer: bool = True):
    """One training step; with ``fast_optimizer`` Adam as the studies train with it
    (:func:`~lus_common.training.torch_loop.make_optimizer`: fused on CUDA), else the default."""
    params = model.parameters()
    optimizer = (make_optimizer(params, 1e-4, device) if fast_optimizer
                 else torch.optim.Adam(params, lr=1e-4))  # fmt: skip
    loss_fn = nn.BCEWithLogitsLoss()

    graphs = hasattr(model, "_orig_mod")  # compiled: tell CUDA graphs a new step begins

    def step():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(
    model_name: str,
    size: int,
    batch: int,
    steps: int,
    amp: bool,
    channels_last: bool,
    device: torch.device,
    compile: bool | str = False,
    warmup: int = 3,
    profile=None,
) -> dict:
    """Images/s and TFLOP/s of ``steps`` training steps of one model variant.

    ``compile``: ``torch.compile`` the model (``True``: its default mode, or a mode of
    :data:`COMPILE_MODES`). ``profile``: a text file to which ``torch.profiler``'s table of five
    more steps is appended (the top operators by device time on CUDA, else by CPU time).
    """
    mode = compile_mode(compile)
    torch.manual_seed(0)
    model, _ = create_model(model_name)
    model.to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fast = amp or channels_last or bool(mode)  # the configured variant; the baseline stays plain
    compiled = torch.compile(model, mode=None if mode == "default" else mode) if mode else model
    step = _step_fn(compiled, x, y, amp, device, fast)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    flops = 3 * counter.get_total_flops()
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    if profile:
        _profile_steps(step, device, profile, f"{model_name} {size}px batch {batch}, "
                       f"amp {amp}, channels_last {channels_last}, compile {mode}")  # fmt: skip
    return {
        "params": count_parameters(model),
        "images_per_s": batch * steps / seconds,
        "tflops": flops * steps / seconds / 1e12,
        "gflop_per_step": flops / 1e9,
        "seconds": seconds,
    }


def _profile_steps(step, device: torch.device, path, title: str, steps: int = 5) -> None:
    """Append ``torch.profiler``'s operator table of ``steps`` more steps to the file ``path``."""
    from pathlib import Path

    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    key = "cuda_time_total" if cuda else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    with Path(path).open("a") as f:
        f.write(f"## {title}: {steps} steps on {describe_device(device)}, by {key}\n{table}\n\n")


def benchmark(
    model: str,
    size: int,
    batch: int,
    amp: bool = False,
    steps: int = 200,
    device: str = "auto",
    compile: bool | str = False,
    profile=None,
) -> dict:
    """Benchmark a configured variant against the eager fp32 baseline in one run.

    Args:
        model: a key of :data:`lus_common.models.torch_smp.MODELS`.
        size: square image side.
        batch: images per step.
        amp: bf16 autocast (CUDA only; on CPU the flag is recorded but autocast stays off).
        steps: timed steps per variant.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        compile: wrap the configured variant in ``torch.compile`` (``True``: its default mode;
            or a mode of :data:`COMPILE_MODES`, e.g. ``"reduce-overhead"`` for CUDA graphs).
        profile: a text file to which the configured variant's profiler table is appended.

    Returns:
        One flat dict: the variant's ``images_per_s`` and ``tflops``, the baseline's, and
        ``speedup`` (variant / baseline images/s).
    """
    dev = resolve_device(device)
    use_amp = amp and dev.type == "cuda"
    mode = compile_mode(compile)
    cuda = dev.type == "cuda"
    fast = time_training(model, size, batch, steps, use_amp, cuda, dev, mode, profile=profile)
    tuned, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    try:  # the baseline without cuDNN's autotuner, which the fast variant's optimizer switched on
        base = time_training(model, size, batch, steps, False, False, dev)
    finally:
        torch.backends.cudnn.benchmark = tuned
    return {
        "model": model,
        "size": size,
        "batch": batch,
        "steps": steps,
        "device": describe_device(dev),
        "amp": use_amp,
        "channels_last": cuda,
        "compile": bool(mode),
        "compile_mode": mode,
        "fused_adam": cuda,
        "images_per_s": round(fast["images_per_s"], 2),
        "tflops": round(fast["tflops"], 4),
        "baseline_images_per_s": round(base["images_per_s"], 2),
        "baseline_tflops": round(base["tflops"], 4),
        "speedup": round(fast["images_per_s"] / base["images_per_s"], 3),
        "gflop_per_step": round(fast["gflop_per_step"], 3),
        "torch": torch.__version__,
    }


# Each Keras model's torch counterpart for ``lus bench --keras``: x_unet and the plain U-Net are
# the same network (Ronneberger's, 64 to 1024 filters); the others are smp U-Nets on the same
# encoder with smp's own decoder, so their ratio compares two frameworks and two decoders.
KERAS_TWINS = {"x_unet": "unet", "vgg16_unet": "unet_vgg16", "resnet50_unet": "unet_resnet50"}


def benchmark_keras(
    model: str, size: int, batch: int, amp: bool = False, steps: int = 50, device: str = "auto"
) -> dict:
    """Keras 3 (torch backend) training speed beside its torch counterpart, in one run.

    The Keras model (:func:`lus_common.models.keras_unets.create_keras_model`, no pretrained
    weights: speed only) trains ``steps`` batches of random data held on the device with
    ``train_on_batch`` (Adam, binary cross-entropy), under the mixed bf16 policy with ``amp`` on
    CUDA, else float32; its twin of :data:`KERAS_TWINS` trains as :func:`time_training` does the
    configured variant (bf16 autocast with ``amp``, channels_last and fused Adam on CUDA).

    Returns:
        One flat dict: ``keras_images_per_s``, ``torch_images_per_s``, ``keras_over_torch``,
        both models' parameter counts, the device and versions.
    """
    from lus_common.models import keras_unets

    twin = lookup(KERAS_TWINS, model, "Keras model to benchmark")
    dev = resolve_device(device)
    use_amp = amp and dev.type == "cuda"
    keras_unets.use_device(dev.type)
    k = keras_unets.keras()
    k.mixed_precision.set_global_policy("mixed_bfloat16" if use_amp else "float32")
    net, _ = keras_unets.create_keras_model(model, size, encoder_weights=None)
    net.compile(optimizer=k.optimizers.Adam(1e-4), loss=k.losses.BinaryCrossentropy())
    x = k.random.normal((batch, *net.input_shape[1:]), seed=0)
    y = k.ops.cast(k.random.uniform((batch, *net.output_shape[1:]), seed=1) > 0.5, "float32")
    for _ in range(3):  # warm-up: the first steps build the optimizer's state
        net.train_on_batch(x, y)
    _sync(dev)
    start = time.perf_counter()
    for _ in range(steps):
        net.train_on_batch(x, y)
    _sync(dev)
    keras_ips = batch * steps / (time.perf_counter() - start)
    torch_run = time_training(twin, size, batch, steps, use_amp, dev.type == "cuda", dev)
    return {
        "keras_model": model,
        "torch_twin": twin,
        "size": size,
        "batch": batch,
        "steps": steps,
        "device": describe_device(dev),
        "amp": use_amp,
        "keras_policy": k.mixed_precision.global_policy().name,
        "keras_params": int(net.count_params()),
        "torch_params": torch_run["params"],
        "keras_images_per_s": round(keras_ips, 2),
        "torch_images_per_s": round(torch_run["images_per_s"], 2),
        "keras_over_torch": round(keras_ips / torch_run["images_per_s"], 3),
        "keras": k.__version__,
        "torch": torch.__version__,
    }


PHANTOMS = ("lus", "lus_v1", "lus_linear", "lus_convex", "cxr", "salient", "fetal_head")


def benchmark_phantom(kind: str, size: int = 256, n: int = 1024, seed: int = 0) -> dict:
    """Generation speed of a phantom: ``lus bench --phantom lus --size 256``.

    Args:
        kind: one of :data:`PHANTOMS` (``lus``: lung ultrasound videos of 16 frames, linear and
            convex probes mixed, all diagnoses, the calibrated appearance; ``lus_v1``: the same
            with the first generator's).
        size: square image side.
        n: images to generate (after a short warm-up).
        seed: generator seed.

    Returns:
        One flat dict with ``images_per_s``, ``seconds``, ``n``, ``size`` and the CPU count.
    """
    import os
    import platform

    from lus_common import phantoms

    makers = {
        "lus": lambda m: phantoms.lung_ultrasound_phantom(m, image_size=size, seed=seed),
        "lus_v1": lambda m: phantoms.lung_ultrasound_phantom(
            m, image_size=size, seed=seed, appearance="v1"
        ),
        "lus_linear": lambda m: phantoms.lung_ultrasound_phantom(
            m, image_size=size, probe="linear", seed=seed
        ),
        "lus_convex": lambda m: phantoms.lung_ultrasound_phantom(
            m, image_size=size, probe="convex", seed=seed
        ),
        "cxr": lambda m: phantoms.chest_xray_phantom(m, size, abnormal_fraction=0.5, seed=seed),
        "salient": lambda m: phantoms.salient_object_phantom(m, size, seed=seed),
        "fetal_head": lambda m: phantoms.fetal_head_phantom(m, size, seed=seed),
    }
    make = lookup(makers, kind, "phantom")
    make(32)  # warm-up: imports, FFT plans
    start = time.perf_counter()
    make(n)
    seconds = time.perf_counter() - start
    return {
        "phantom": kind,
        "size": size,
        "n": n,
        "images_per_s": round(n / seconds, 1),
        "seconds": round(seconds, 3),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
