"""examples/python/train_mlp.py runs and shows FOOF and K-FAC beating SGD."""

import os
import subprocess
import sys
from pathlib import Path

import kronfac

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "python" / "train_mlp.py"


def test_train_mlp_example():
    env = dict(os.environ, PYTHONPATH=str(Path(kronfac.__file__).resolve().parent.parent))
    r = subprocess.run([sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    final = dict(item.split() for item in
                 r.stdout.split("final: ")[1].splitlines()[0].split(", "))
    losses = {name: float(value) for name, value in final.items()}
    assert set(losses) == {"sgd", "foof", "kfac"}
    assert losses["foof"] < losses["sgd"] and losses["kfac"] < losses["sgd"]
    # Every optimizer learned something from the ~ln(5) = 1.6 of the untrained network.
    assert max(losses.values()) < 1.0
