"""The device and precision a part runs on, decided once at its start, and whether this PyTorch
build can run on the GPU the session gave (Kaggle's P100 is too old for current builds)."""

import torch

from training.config import ConfigError


def choose_device(args):
    """Device and precision, decided once: bf16 only where the GPU does it natively (compute
    capability 8.0+); a T4 gets fp16 with a GradScaler; CPU runs in fp32 unless asked."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible")
    if (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu":
        return torch.device("cpu"), args.amp or "off"
    device = torch.device("cuda", torch.cuda.current_device())  # start_processes picked this rank's GPU
    check_gpu(device, args.amp)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return device, args.amp or ("bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16")


def check_gpu(device, amp):
    """One sentence, before the first kernel fails, for a GPU the installed PyTorch has no kernels for
    (a P100 in current builds) or a precision the GPU lacks (bf16 on a T4)."""
    name, (major, minor) = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
    arches = torch.cuda.get_arch_list()  # e.g. sm_75 ... sm_120: the GPU generations this build was compiled for
    if arches and not gpu_has_kernels((major, minor), arches):
        raise ConfigError(f"this PyTorch {torch.__version__} has no kernels for the {name} (compute capability "
                          f"{major}.{minor}; it was built for {', '.join(arches)}): use a GPU it was built for "
                          f"(on Kaggle a T4 or an L4, not the P100) or --device cpu")
    if amp == "bf16" and (major, minor) < (8, 0):
        raise ConfigError(f"--amp bf16 needs a GPU with native bfloat16 (compute capability 8.0 or newer: A100, "
                          f"L4, H100); the {name} ({major}.{minor}) has none: use --amp fp16, its default")


def gpu_has_kernels(capability, arches):
    """Whether a build compiled for `arches` (sm_XY binaries, compute_XY PTX) runs on a GPU of this
    compute capability: an sm_XY binary runs on X.Y up to X.9, PTX is compiled for any newer GPU."""
    for arch in arches:
        kind, _, digits = arch.partition("_")
        number = int("".join(c for c in digits if c.isdigit()) or 0)
        if kind == "sm" and number // 10 == capability[0] and number % 10 <= capability[1]:
            return True
        if kind == "compute" and number <= 10 * capability[0] + capability[1]:
            return True
    return False


# Dense bf16/fp16 tensor-core TFLOP/s of the GPUs a session may give (datasheets, without sparsity; the T4
# and V100 in fp16): what MFU is measured against.
PEAK_TFLOPS = {"H100": 989, "H200": 989, "A100": 312, "L4": 121, "A10": 125, "T4": 65, "V100": 125, "P100": 19}


def peak_flops(device, amp):
    """The GPU's peak FLOP/s in the part's mixed precision, or None (CPU, fp32, or a GPU not listed)."""
    if device.type != "cuda" or amp not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS.items() if key in name), None)
