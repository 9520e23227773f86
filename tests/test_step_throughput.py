"""benchmarks/step_throughput.py runs the trainer's step for every method and counts FLOPs
that match the architecture (not a speed test: the timings it prints are not checked)."""
import json
import os
import subprocess
import sys


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "step_throughput.py")
# small_cnn at 16 x 16 px: conv 3x3 3->32 at 16x16, 32->64 at 8x8, 64->128 at 4x4, two FLOPs
# per multiply-add.
SMALL_CNN_CONV_FLOPS = 2 * (16 * 16 * 27 * 32 + 8 * 8 * 288 * 64 + 4 * 4 * 576 * 128)
KEYS = {"images_per_second", "seconds_per_step", "method", "encoder", "batch_size",
        "precision", "jit_compile", "flops_per_image", "peak_fraction"}


def test_step_benchmark_prints_its_json_line_with_counted_flops():
    # Both methods at once: each process starts TensorFlow (mostly single-threaded Python).
    processes = {method: subprocess.Popen(
        [sys.executable, SCRIPT, f"--method={method}", "--encoder=small_cnn", "--batch_size=8",
         "--image_size=16", "--code_dim=16", "--steps=2", "--warmup_steps=1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")) for method in ("bare", "nac_mq")}
    try:
        outputs = {method: p.communicate(timeout=300) for method, p in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for method, (stdout, stderr) in outputs.items():
        assert processes[method].returncode == 0, (method, stderr[-3000:])
        report = json.loads(stdout.strip().splitlines()[-1])
        assert KEYS <= set(report)
        assert (report["method"], report["encoder"], report["batch_size"], report["steps"]) == \
            (method, "small_cnn", 8, 2)
        assert report["images_per_second"] > 0 and report["seconds_per_step"] > 0
        # The profiler's forward count is the convolutions plus a little element-wise work.
        forward = report["encoder_forward_flops_per_image"]
        assert SMALL_CNN_CONV_FLOPS <= forward <= 1.02 * SMALL_CNN_CONV_FLOPS
        # A step runs forward and backward (about twice the forward) on two views, plus
        # heads.
        assert 5 * forward <= report["flops_per_image"] <= 12 * forward


def test_step_benchmark_refuses_bad_arguments_naming_them():
    result = subprocess.run([sys.executable, SCRIPT, "--steps=0"], capture_output=True,
                            text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2 and "--steps must be a positive integer" in result.stderr
