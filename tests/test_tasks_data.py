"""The data-backed tasks: character-level LM (BPC, TBPTT streams) and permuted MNIST."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import manntk
from manntk.data.mnist import MNIST
from manntk.tasks.base import TaskContext
from manntk.tasks.char_lm import CharLM, CharLMConfig
from manntk.training.evaluate import evaluate

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEXT = "abracadabra, a cab for a bard; cabbage and a bad arab.\n" * 3


@pytest.fixture
def text_task(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT)
    return CharLM(CharLMConfig(dataset="text", path=str(path), split=[0.6, 0.2, 0.2]), TaskContext(tbptt=4))


class BigramModel(torch.nn.Module):
    """A fixed model: logits of the next character depend only on the current one."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = torch.nn.Embedding(vocab, vocab)
        torch.nn.init.normal_(self.table.weight)

    def forward(self, x, state=None):
        return self.table(x), {"seen": torch.zeros(1)}


def test_bpc_counts_every_character_once_and_matches_a_hand_computation(text_task):
    model = BigramModel(text_task.input_size)
    stream = text_task.corpus.valid
    log_probs = torch.log_softmax(model.table.weight, dim=-1)
    by_hand = -sum(log_probs[a, b].item() for a, b in zip(stream[:-1].tolist(), stream[1:].tolist())) / (len(stream) - 1) / math.log(2)
    for batch_size in (1, 3, 5):  # padded rows and short last chunks must not change the figure
        metrics = evaluate(model, text_task, "valid", batch_size, torch.device("cpu"))
        assert metrics["bpc"] == pytest.approx(by_hand, rel=1e-5)


def test_tbptt_chunks_with_carried_state_equal_one_long_forward(text_task):
    model = manntk.build_model({"input_size": text_task.input_size, "output_size": text_task.output_size, "embedding": 6,
                                "cell": {"name": "armin", "hidden_size": 8}, "addressing": {"name": "auto"},
                                "write": {"name": "overwrite"}, "memory": {"slots": 3}}).eval()
    stream = text_task.corpus.valid
    with torch.no_grad():
        logits, _ = model(stream[:-1].unsqueeze(0))
    nll = torch.nn.functional.cross_entropy(logits[0], stream[1:], reduction="sum").item()
    metrics = evaluate(model, text_task, "valid", 1, torch.device("cpu"))
    assert metrics["loss"] == pytest.approx(nll / (len(stream) - 1), rel=1e-5)


def test_training_batches_continue_rows_and_restart_each_epoch(text_task):
    per_epoch = text_task.steps_per_epoch(2)
    first, second = text_task.train_batch(0, 2), text_task.train_batch(1, 2)
    assert first.fresh and not second.fresh
    assert torch.equal(first.targets[:, -1], second.inputs[:, 0])  # chunk 1 continues chunk 0 in every row
    again = text_task.train_batch(per_epoch, 2)
    assert again.fresh and torch.equal(again.inputs, first.inputs)


def test_char_lm_config_errors():
    with pytest.raises(ValueError, match="needs path"):
        CharLMConfig(dataset="text")
    with pytest.raises(ValueError, match="three positive fractions"):
        CharLMConfig(dataset="text", path="x", split=[0.5, 0.5])


@pytest.mark.skipif(not (SHARED / "ptb").is_dir(), reason="../shared/data/ptb is not present")
def test_real_ptb_characters():
    task = CharLM(CharLMConfig(), TaskContext(root=SHARED, tbptt=150))
    assert task.input_size == 50
    assert task.stream("valid", 32).n_targets == 393_042 - 1


def fake_mnist(train: int = 30, test: int = 10) -> MNIST:
    generator = torch.Generator().manual_seed(0)
    images = lambda n: torch.randint(0, 256, (n, 28, 28), generator=generator, dtype=torch.uint8)  # noqa: E731
    labels = lambda n: torch.arange(n) % 10  # noqa: E731
    return MNIST(images(train), labels(train), images(test), labels(test))


def test_pmnist_permutes_pixels_with_its_own_seed_and_classifies_at_the_last_step(monkeypatch):
    from manntk.tasks import pmnist

    data = fake_mnist()
    monkeypatch.setattr(pmnist, "load_mnist", lambda root, download: data)
    task = pmnist.PMnist(pmnist.PMnistConfig(permutation_seed=3, validation_size=10), TaskContext())
    again = pmnist.PMnist(pmnist.PMnistConfig(permutation_seed=3, validation_size=10), TaskContext())
    other = pmnist.PMnist(pmnist.PMnistConfig(permutation_seed=4, validation_size=10), TaskContext())
    assert torch.equal(task.permutation, again.permutation) and not torch.equal(task.permutation, other.permutation)
    assert sorted(task.permutation.tolist()) == list(range(784))
    flat = data.train_images[0].reshape(-1).float() / 255
    torch.testing.assert_close(task.images["train"][0], flat[task.permutation])
    assert len(task.labels["train"]) == 20 and len(task.labels["valid"]) == 10 and len(task.labels["test"]) == 10
    batch = task.train_batch(0, 4)
    assert batch.inputs.shape == (4, 784, 1) and batch.mask.sum() == 4 and batch.mask[:, -1].all()
    # one epoch visits every training image once, and batch i is the same whenever it is asked for
    seen = torch.cat([task.train_batch(i, 4).targets for i in range(task.steps_per_epoch(4))])
    assert len(seen) == 20
    assert torch.equal(task.train_batch(7, 4).inputs, again.train_batch(7, 4).inputs)
    logits = torch.zeros(4, 784, 10)
    logits[torch.arange(4), -1, batch.targets] = 5.0
    logits[0, -1] = 0.0
    logits[0, -1, (batch.targets[0] + 1) % 10] = 5.0  # one wrong answer
    assert task.summarize({k: float(v) for k, v in task.score(logits, batch).items()})["accuracy"] == 0.75


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="../shared/data/mnist is not present")
def test_real_mnist_split():
    from manntk.tasks.pmnist import PMnist, PMnistConfig

    task = PMnist(PMnistConfig(), TaskContext(root=SHARED))
    assert len(task.labels["train"]) == 54_000 and len(task.labels["valid"]) == 6_000 and len(task.labels["test"]) == 10_000
    assert task.steps_per_epoch(128) == 421
    assert 0.0 <= float(task.images["test"].min()) and float(task.images["test"].max()) <= 1.0
