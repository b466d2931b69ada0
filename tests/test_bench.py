"Every benchmark script runs end to end in its smoke mode (--quick); the numbers are not checked here, bench/ reports them."
import subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = [("attention.py", ["--threads", "1"], ["QUICK", "nn.MHA", "ratio"]),
         ("adapter_step.py", [], ["time ratio ours/AdapterHub"]),
         ("peft_step.py", [], ["time ratio"]),
         ("scale.py", [], ["tokens/s", "bf16/fp32 speed"]),
         ("privacy_step.py", [], ["DP/plain time", "memory"])]


@pytest.mark.parametrize("script,extra,expected", SMOKE, ids=[s for s, _, _ in SMOKE])
def test_benchmark_smoke_mode(script, extra, expected):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", *extra], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    for text in expected: assert text in result.stdout


def test_every_benchmark_has_a_smoke_test():
    scripts = {p.name for p in (ROOT / "bench").glob("[!_]*.py")}
    assert scripts == {s for s, _, _ in SMOKE}
