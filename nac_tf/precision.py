"""The precision a run computes in, and `precision="auto"`: the fastest safe one here.

Mixed precision keeps variables, losses and the optimizer in float32 and computes the
networks in 16 bits. Whether that is faster depends on the hardware: on CPUs without native
bfloat16 instructions TensorFlow emulates it and runs slower than float32, and float16 on
GPUs older than Volta has no tensor cores. `auto` therefore picks a 16-bit policy only where
the hardware has native units for it:

- TPU: mixed_bfloat16 (the matrix units compute in bfloat16);
- GPUs of compute capability >= 8.0 (Ampere and newer): mixed_bfloat16 (no loss scaling
  needed, float32's range); 7.x (Volta, Turing): mixed_float16 with loss scaling;
  older GPUs: float32;
- CPUs with avx512_bf16 or amx_bf16 (AMD Zen 4, Intel Cooper Lake / Sapphire Rapids):
  mixed_bfloat16, which oneDNN runs on those instructions (1.35-1.66x float32's step
  measured on a Zen 4, docs/speed.md); other CPUs: float32.

"Safe": tests/test_precision.py bounds how far both mixed policies drift from float32 over
training steps (first loss within the policy's unit roundoff, update direction within
10 units of it). A mixed run still gives numbers that differ from a float32 run in the last
digits, which is why float32 stays the default and `auto` is asked for explicitly.
"""
CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo_path="/proc/cpuinfo"):
    """The instruction-set flags of the first CPU in /proc/cpuinfo (empty if unreadable,
    e.g. not Linux)."""
    try:
        with open(cpuinfo_path) as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def fastest_safe_precision(num_tpus, gpu_compute_capabilities, flags):
    """(precision, reason) for `auto` on this hardware (see the module docstring).

    num_tpus: TPU devices; gpu_compute_capabilities: (major, minor) of every GPU (None when
    unknown); flags: the CPU's instruction-set flags.
    """
    if num_tpus:
        return "mixed_bfloat16", "TPU: bfloat16 matrix units"
    if gpu_compute_capabilities:
        if any(capability is None for capability in gpu_compute_capabilities):
            return "float32", "a GPU of unknown compute capability"
        oldest = min(gpu_compute_capabilities)
        version = f"{oldest[0]}.{oldest[1]}"
        if oldest >= (8, 0):
            return "mixed_bfloat16", f"GPU compute capability {version} >= 8.0: bfloat16 " \
                                     "tensor cores"
        if oldest >= (7, 0):
            return "mixed_float16", f"GPU compute capability {version}: float16 tensor " \
                                    "cores (with loss scaling), no bfloat16 ones"
        return "float32", f"GPU compute capability {version} < 7.0: no tensor cores"
    native = [flag for flag in CPU_BFLOAT16_FLAGS if flag in flags]
    if native:
        return "mixed_bfloat16", f"CPU with {native[0]}: oneDNN's bfloat16 kernels"
    return "float32", "CPU without native bfloat16 instructions (bfloat16 would be emulated)"


def resolve_precision(precision):
    """(precision to compute in, reason): `precision` itself, or what `auto` picks on the
    devices TensorFlow sees (reason None unless `auto`)."""
    if precision != "auto":
        return precision, None
    import tensorflow as tf  # noqa: PLC0415 (config code imports this module without TF)

    capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability")
                    for gpu in tf.config.list_physical_devices("GPU")]
    num_tpus = len(tf.config.list_logical_devices("TPU"))
    return fastest_safe_precision(num_tpus, capabilities, cpu_flags())
