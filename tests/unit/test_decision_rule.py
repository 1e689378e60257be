"""One decision rule: the research harness and the gateway give the same label and the
same ``suspected_adversarial`` flag for the same per-copy logits.

The harness side is what the published figures run: the ``shuffle`` row
(:class:`~service.research.robustness.smoothing.ShuffleVote`, i.e. ``ShuffleEnsemble.predict``),
the ``none`` row for the undefended label, and the flag the detection analysis computes
from the evaluation's record. The gateway side is :meth:`Pipeline.classify` against the
real handler in-process. A model that answers with fixed logits (whatever the clip)
feeds both the same numbers, so any difference is a difference of the rule.
"""

from __future__ import annotations

import anyio
import numpy as np
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.config import Settings
from service.core.ensemble import majority_vote_batch
from service.core.presets import ShufflePreset
from service.core.vote import vote_batch
from service.gateway.pipeline import Effective, Pipeline, Shuffles
from service.gateway.upload import Upload
from service.modelserver.meta import ModelMeta
from service.research.experiments.detection import signal_scores
from service.research.robustness.smoothing import NoDefense, ShuffleVote
from tests import media
from tests.unit.test_gateway_pipeline import HandlerBackend

T = 8


class FixedLogits(torch.nn.Module):
    """Answers a batch of ``B`` clips with the first ``B`` rows of its table."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("table", torch.from_numpy(table))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[: x.shape[0]]


def _harness(undefended: np.ndarray, copies: np.ndarray, threshold: float) -> tuple[int, bool]:
    """Label and flag as the evaluation and the detection analysis compute them."""
    videos = torch.zeros(1, 3, T, 4, 4)
    plain = int(NoDefense(FixedLogits(undefended[None])).vote(videos)[0][0])
    preset = ShufflePreset(h1=2, h2=1, ensemble=copies.shape[0])
    gen = torch.Generator().manual_seed(0)
    labels, counts = ShuffleVote(FixedLogits(copies), preset).vote(videos, gen)
    pred = int(labels[0])
    # the record of `shuffleguard evaluate`'s shuffle row (evaluate.py)
    record = {
        "pred": pred,
        "undefended_pred": plain,
        "vote_share": float(counts[0, pred]) / float(counts[0].sum()),
    }
    return pred, bool(signal_scores(record, threshold)["gateway"])


def _gateway(undefended: np.ndarray, copies: np.ndarray, threshold: float) -> tuple[int, bool]:
    """Label and flag of the gateway's classify path (the real handler, no early stop)."""
    K = copies.shape[1]
    meta = ModelMeta(
        name="m", arch="test", clip_len=T, frame_interval=1, crop_size=4,
        labels=tuple(f"c{k}" for k in range(K)), preset=ShufflePreset(2, 1, 10),
        extra={"wire_modes": ["copy", "index"]},
    )  # fmt: skip
    backend = HandlerBackend(FixedLogits(np.concatenate([undefended[None], copies])), meta)
    pipe = Pipeline(Settings(suspicion_threshold=threshold), backend, catalog=None)  # type: ignore[arg-type]
    clip = np.zeros((T, 4, 4, 3), np.uint8)
    upload = Upload(data=media.npy_bytes(clip), content_type="application/x-npy")
    params = Effective(seed=0, shuffles=Shuffles(copies.shape[0], 2, 1, early_stop=False))

    async def go() -> tuple[int, bool]:
        verdict = await pipe.classify(upload, params, meta)
        return verdict.label_index, verdict.suspected_adversarial

    return anyio.run(go)


#: copy logits with ties everywhere: within a copy (two argmaxes), between classes'
#: vote counts, and between their mean softmax
_VALUES = st.sampled_from([-2.0, 0.0, 0.5, 1.0, 3.0])
_FLOATS = st.floats(-8.0, 8.0, width=32)


@st.composite
def _logits(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n, K = draw(st.integers(1, 12)), draw(st.integers(1, 5))
    value = draw(st.sampled_from([_VALUES, _FLOATS]))
    rows = draw(st.lists(st.lists(value, min_size=K, max_size=K), min_size=n + 1, max_size=n + 1))
    table = np.asarray(rows, np.float32)
    return table[0], table[1:]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logits=_logits(), threshold=st.sampled_from([0.3, 0.5, 0.6, 0.7, 0.9]))
@example(  # two copies, one vote each, mean softmax apart by less than float32 can tell:
    # the harness's former float32 tie-break said class 0, the gateway's rule class 1
    logits=(
        np.array([1.0, 0.0], np.float32),
        np.array([[4.099390506744385, 0.0], [0.0, 4.099391460418701]], np.float32),
    ),
    threshold=0.5,
)
def test_harness_and_gateway_decide_alike(
    logits: tuple[np.ndarray, np.ndarray], threshold: float
) -> None:
    undefended, copies = logits
    assert _harness(undefended, copies, threshold) == _gateway(undefended, copies, threshold)


def test_the_torch_vote_is_the_numpy_rule_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    logits = rng.integers(-2, 3, (64, 9, 4)).astype(np.float32)  # many ties
    logits[::2] += rng.normal(0, 1e-6, logits[::2].shape).astype(np.float32)
    labels, counts, mean_probs = majority_vote_batch(torch.from_numpy(logits))
    ours = vote_batch(logits)
    np.testing.assert_array_equal(labels.numpy(), ours[0])
    np.testing.assert_array_equal(counts.numpy(), ours[1])
    np.testing.assert_array_equal(mean_probs.numpy(), ours[2])


def test_near_tie_goes_to_the_higher_float64_mean_softmax() -> None:
    """The regression case of the example above, on the rule alone."""
    copies = np.array([[[4.099390506744385, 0.0], [0.0, 4.099391460418701]]], np.float32)
    assert int(vote_batch(copies)[0][0]) == 1
    assert int(majority_vote_batch(torch.from_numpy(copies))[0][0]) == 1
