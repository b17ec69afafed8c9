"""bin/spark-gpu-discovery prints Spark's GPU resource JSON from nvidia-smi, or says why it cannot.

No machine here has a GPU: a stand-in ``nvidia-smi`` on PATH prints what the real one prints for
``--query-gpu=index --format=csv,noheader`` (one index a line), so what is tested is the script's
own parsing, filtering and errors, not the driver.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bin" / "spark-gpu-discovery"


def _run(tmp_path: Path, smi: str | None, **env: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if smi is not None:
        (bin_dir / "nvidia-smi").write_text(smi)
        (bin_dir / "nvidia-smi").chmod(0o755)
    environ = {"PATH": f"{bin_dir}:/usr/bin:/bin", **env}  # CUDA_VISIBLE_DEVICES only when given
    return subprocess.run([str(SCRIPT)], env=environ, capture_output=True, text=True, check=False)


def test_lists_every_gpu_as_sparks_resource_json(tmp_path):
    done = _run(tmp_path, '#!/bin/sh\n[ "$1" = "--query-gpu=index" ] || exit 9\nprintf "0\\n1\\n3\\n"\n')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"name": "gpu", "addresses": ["0", "1", "3"]}


def test_cuda_visible_devices_limits_the_list(tmp_path):
    done = _run(tmp_path, '#!/bin/sh\nprintf "0\\n1\\n2\\n"\n', CUDA_VISIBLE_DEVICES="2,0")
    assert json.loads(done.stdout) == {"name": "gpu", "addresses": ["0", "2"]}
    done = _run(tmp_path, '#!/bin/sh\nprintf "0\\n"\n', CUDA_VISIBLE_DEVICES="5")
    assert json.loads(done.stdout) == {"name": "gpu", "addresses": []}


@pytest.mark.skipif(any(Path(p, "nvidia-smi").exists() for p in ("/usr/bin", "/bin")), reason="a real driver")
def test_without_a_driver_it_fails_with_what_to_do(tmp_path):
    done = _run(tmp_path, None)
    assert done.returncode == 1 and done.stdout == ""
    assert "nvidia-smi not found" in done.stderr and "executor_gpus = 0" in done.stderr


def test_a_failing_nvidia_smi_is_reported(tmp_path):
    done = _run(tmp_path, "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate' >&2\nexit 9\n")
    assert done.returncode == 1 and "nvidia-smi failed" in done.stderr and "could not communicate" in done.stderr
    assert os.access(SCRIPT, os.X_OK)
