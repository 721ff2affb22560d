"""The recipes shipped in ``recipes/``: every one validates, resolves its ``extends:`` chain
as intended, and trains two steps on the CPU at tiny sizes.

PTB, enwik8 and pMNIST recipes read the real data from the repository's sibling folder
``../shared/data`` and are skipped, with the reason, where it is absent. Loading a corpus
takes seconds, so each is loaded once per module and shared by every recipe that needs it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from manntk.recipe import load_mapping, load_recipe, read_yaml, setting_differences
from manntk.training import train

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
BASES = RECIPES / "base"
DATA = (REPO / ".." / "shared" / "data").resolve()
ENWIK8_PREFIX = DATA / "enwik8" / "enwik8_first_1000000_bytes"

ALL_FILES = sorted(RECIPES.rglob("*.yaml"))
#: Complete recipes; files under recipes/base are partial (no task or no model).
SHIPPED = [path for path in ALL_FILES if BASES not in path.parents]


def rel(path: Path) -> str:
    return path.relative_to(RECIPES).as_posix()


def recipe(name: str) -> Path:
    return RECIPES / name


# -- every file ------------------------------------------------------------------------


def test_the_recipes_are_there():
    names = {rel(path) for path in SHIPPED}
    expected = {"armin_copy.yaml", "armin_ptb.yaml", "enwik8/armin_2layer.yaml"}
    expected |= {f"ptb/{model}.yaml" for model in ("armin_500", "awta", "tardis", "lstm", "ntm")}
    expected |= {f"pmnist/{model}.yaml" for model in ("armin", "awta", "tardis", "ntm", "lstm")}
    expected |= {
        f"algorithmic/{task}/{model}.yaml"
        for task in ("copy", "repeat_copy", "associative_recall", "priority_sort")
        for model in ("armin", "awta", "tardis", "ntm", "lstm")
    }
    expected |= {f"ablations/armin_ptb_{what}.yaml" for what in ("no_read_output", "tardis_addressing", "soft_reads")}
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("path", ALL_FILES, ids=rel)
def test_every_file_says_what_it_reproduces_and_names_itself(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# "), f"{rel(path)} must start with a comment saying what it reproduces"
    header = " ".join(line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])
    assert "paper" in header.lower() and ("table" in header.lower() or "figure" in header.lower()), rel(path)
    own = read_yaml(path)  # this file's own keys, before extends
    assert own.get("name"), f"{rel(path)} sets no name"
    assert own.get("description"), f"{rel(path)} sets no description"


def test_recipe_names_are_unique_but_for_the_copy_alias():
    names: dict[str, list[str]] = {}
    for path in SHIPPED:
        names.setdefault(load_recipe(path).name, []).append(rel(path))
    repeated = {name: paths for name, paths in names.items() if len(paths) > 1}
    assert repeated == {"armin-copy": ["algorithmic/copy/armin.yaml", "armin_copy.yaml"]}


@pytest.mark.parametrize("path", SHIPPED, ids=rel)
def test_every_shipped_recipe_validates(path):
    loaded = load_recipe(path)
    assert loaded.name and loaded.description
    assert loaded.train.steps is not None or loaded.train.epochs is not None


@pytest.mark.parametrize("path", sorted(BASES.rglob("*.yaml")), ids=rel)
def test_base_files_merge(path):
    """A base may be partial, but its chain must resolve to a mapping."""
    assert isinstance(load_mapping(path), dict)


# -- extends chains ----------------------------------------------------------------------


def differences(child: str, parent: str) -> set[str]:
    """Leaf paths whose resolved value differs between two recipes (name, description aside)."""
    return set(setting_differences(load_mapping(recipe(child)), load_mapping(recipe(parent)))) - {"name", "description"}


def test_read_output_ablation_differs_from_armin_ptb_only_in_read_output():
    assert differences("ablations/armin_ptb_no_read_output.yaml", "armin_ptb.yaml") == {"model.cell.read_output"}
    assert load_recipe(recipe("ablations/armin_ptb_no_read_output.yaml")).model.cell.config.read_output is False
    assert load_recipe(recipe("armin_ptb.yaml")).model.cell.config.read_output is True


def test_soft_read_ablation_differs_from_armin_ptb_only_in_hard():
    assert differences("ablations/armin_ptb_soft_reads.yaml", "armin_ptb.yaml") == {"model.addressing.hard"}
    assert load_recipe(recipe("ablations/armin_ptb_soft_reads.yaml")).model.addressing.config.hard is False


def test_tardis_addressing_ablation_is_awta_which_differs_from_armin_ptb_only_in_addressing():
    assert differences("ablations/armin_ptb_tardis_addressing.yaml", "ptb/awta.yaml") == set()
    changed = differences("ptb/awta.yaml", "armin_ptb.yaml")
    assert changed and all(key.startswith("model.addressing.") for key in changed)
    awta = load_recipe(recipe("ptb/awta.yaml"))
    assert (awta.model.cell.name, awta.model.addressing.name, awta.model.write.name) == ("armin", "tardis", "overwrite")
    # the addressing node was swapped whole: auto's options did not leak into tardis
    assert "temperature" in load_mapping(recipe("ptb/awta.yaml"))["model"]["addressing"]


def test_table4_armin_setups_differ_from_armin_ptb_in_size_and_truncation():
    assert differences("ptb/armin_500.yaml", "armin_ptb.yaml") == {
        "model.cell.hidden_size", "model.memory.slots", "train.batch_size", "train.tbptt"}
    armin_500 = load_recipe(recipe("ptb/armin_500.yaml"))
    assert (armin_500.model.cell.config.hidden_size, armin_500.model.memory.slots,
            armin_500.train.tbptt, armin_500.train.batch_size) == (500, 5, 50, 384)
    armin_550 = load_recipe(recipe("ptb/armin_550.yaml"))
    assert (armin_550.model.cell.config.hidden_size, armin_550.model.memory.slots,
            armin_550.train.tbptt, armin_550.train.batch_size) == (550, 10, 50, 300)


def test_armin_ptb_has_the_paper_settings():
    main = load_recipe(recipe("armin_ptb.yaml"))
    assert main.task.name == "char_lm" and main.task.config.dataset == "ptb_char"
    cell = main.model.cell.config
    assert (main.model.cell.name, cell.hidden_size, cell.layer_norm, cell.zoneout > 0) == ("armin", 800, True, True)
    assert (main.model.addressing.name, main.model.write.name, main.model.memory.slots) == ("auto", "overwrite", 20)
    assert (main.model.embedding, main.train.tbptt, main.train.batch_size) == (128, 150, 128)
    assert (main.train.optimizer.name, main.train.optimizer.lr, main.train.clip_norm) == ("adam", 0.001, 1.0)


def test_enwik8_is_a_two_layer_armin_ptb():
    changed = differences("enwik8/armin_2layer.yaml", "armin_ptb.yaml")
    assert changed == {
        "task.dataset", "model.layers", "train.epochs", "train.eval_every", "train.checkpoint_every", "eval.batch_size",
        "cpu_alternative"}  # armin_ptb's is a PTB recipe
    assert load_recipe(recipe("enwik8/armin_2layer.yaml")).model.layers == 2


def test_armin_ptb_reports_every_few_minutes_and_names_a_cpu_sized_recipe():
    """On a CPU (~11 s a step) the step counts alone would mean no metric for 9 minutes and no
    checkpoint for 48: durations bound both; the CPU-sized alternative is one pass of ARMIN 500."""
    from manntk.config import parse_every

    main = load_recipe(recipe("armin_ptb.yaml"))
    log, checkpoint = parse_every(main.train.log_every), parse_every(main.train.checkpoint_every)
    assert (log.steps, checkpoint.steps) == (50, 262)  # a GPU's steps: as before
    assert log.seconds <= 5 * 60 and checkpoint.seconds <= 15 * 60
    assert main.cpu_alternative == "ptb/armin_500_cpu"
    cpu = load_recipe(recipe(f"{main.cpu_alternative}.yaml"))
    assert differences("ptb/armin_500_cpu.yaml", "ptb/armin_500.yaml") == {
        "cpu_alternative", "train.epochs", "train.log_every", "train.eval_every", "train.checkpoint_every", "eval.batch_size"}
    assert cpu.train.epochs == 1 and cpu.cpu_alternative is None


def test_armin_copy_is_the_paper_copy_recipe():
    assert differences("armin_copy.yaml", "algorithmic/copy/armin.yaml") == set()  # no seed pinned
    copy = load_recipe(recipe("armin_copy.yaml"))
    assert copy.name == "armin-copy" and copy.task.name == "copy"
    assert (copy.task.config.width, copy.task.config.min_length, copy.task.config.max_length) == (6, 1, 50)
    assert (copy.model.cell.name, copy.model.cell.config.hidden_size) == ("armin", 100)
    assert (copy.model.memory.slots, copy.model.memory.width) == (50, 32)
    assert (copy.train.batch_size, copy.train.steps, copy.train.eval_every, copy.train.stop_when_solved) == (1, 100000, 500, True)


def test_the_authors_priority_sort_differs_from_armins_in_the_task_only():
    assert differences("algorithmic/priority_sort/armin_authors_columns.yaml", "algorithmic/priority_sort/armin.yaml") == {
        "task.sort", "task.end_marker"}
    task = load_recipe(recipe("algorithmic/priority_sort/armin_authors_columns.yaml")).task.config
    assert (task.sort, task.end_marker, task.input_size) == ("columns", False, 9)


def test_the_authors_training_on_repeat_copy_is_their_copy_training_on_the_paper_task():
    """repeat_copy/armin_authors_training.yaml has copy/armin_authors.yaml's model and
    training, and the paper recipe's repeat copy task."""
    assert all(key.startswith("task.") for key in differences(
        "algorithmic/repeat_copy/armin_authors_training.yaml", "algorithmic/copy/armin_authors.yaml"))
    authors = load_recipe(recipe("algorithmic/repeat_copy/armin_authors_training.yaml"))
    assert authors.task == load_recipe(recipe("algorithmic/repeat_copy/armin.yaml")).task
    assert (authors.train.optimizer.name, authors.model.cell.config.recurrent_init) == ("rmsprop", "orthogonal")


OWN_TRAINING = {("copy", "ntm"): {"train.optimizer.name", "train.optimizer.lr", "train.optimizer.momentum", "train.optimizer.alpha",
                                  "train.clip_norm", "train.clip_value", "train.schedule.relapse_gamma", "train.schedule.solved_gamma",
                                  "train.schedule.solved_momentum", "train.flood", "train.nonfinite_gradients",
                                  "task.train_density", "task.train_blanks", "task.train_max_length"},
                ("copy", "awta"): {"train.ema_decay"},
                ("copy", "armin"): {"train.schedule.regress_ratio", "train.schedule.relapse_gamma", "train.schedule.restart_after"}}
"""Training settings a model's recipe may change from the shared protocol, each chosen from
runs across seeds (the NTM-style copy recipe's RMSprop, its rollback on a relapse, its flooding,
its rate and momentum once solved, its skipped overflows and its training data: studies/ntm_copy_seeds.yaml; AwTA
copy's weight average: studies/tardis_copy_reads.yaml; ARMIN copy's regress rollback and its
restart on a plateau: studies/armin_copy_seeds.yaml). The other models are compared with
ARMIN's recipe, so ARMIN's own settings may differ in each of them."""


@pytest.mark.parametrize("task", ["copy", "repeat_copy", "associative_recall", "priority_sort"])
def test_algorithmic_models_share_the_protocol_and_differ_in_the_model(task):
    armin_own = OWN_TRAINING.get((task, "armin"), set())
    for model in ("awta", "tardis", "ntm", "lstm"):
        changed = differences(f"algorithmic/{task}/{model}.yaml", f"algorithmic/{task}/armin.yaml")
        own = {key for key in changed if not key.startswith("model.")}
        assert changed and own <= OWN_TRAINING.get((task, model), set()) | armin_own, (model, own)
    models = ("armin", "awta", "tardis", "ntm", "lstm")
    sizes = {model: load_recipe(recipe(f"algorithmic/{task}/{model}.yaml")).model for model in models}
    assert sizes["armin"].cell.config.hidden_size == sizes["awta"].cell.config.hidden_size == 100
    assert sizes["tardis"].cell.config.hidden_size == sizes["ntm"].cell.config.hidden_size == 120
    assert sizes["lstm"].cell.config.hidden_size == 300
    assert (sizes["ntm"].memory.slots, sizes["ntm"].memory.width) == (128, 20)
    assert all((sizes[m].memory.slots, sizes[m].memory.width) == (50, 32) for m in ("armin", "awta", "tardis"))


def test_pmnist_schedule_decays_after_120_epochs():
    steps_per_epoch = 54000 // 128  # the pmnist task drops the ragged last batch: 421
    for model in ("armin", "awta", "tardis", "ntm", "lstm"):
        loaded = load_recipe(recipe(f"pmnist/{model}.yaml"))
        assert loaded.train.epochs == 150 and loaded.train.clip_norm == 1.0
        assert loaded.train.schedule.name == "step" and loaded.train.schedule.milestones == [120 * steps_per_epoch]
        assert loaded.train.eval_every == steps_per_epoch
        hidden = loaded.model.cell.config.hidden_size
        assert hidden == (128 if model == "lstm" else 100)
        if model != "lstm":
            assert (loaded.model.memory.slots, loaded.model.memory.width) == (28, 28)


# -- two training steps of every recipe ----------------------------------------------------


def data_need(mapping: dict[str, Any]) -> str | None:
    """Which data folder a recipe reads (``ptb``, ``mnist``, ``enwik8``), or None."""
    task = mapping["task"]
    if task["name"] == "char_lm":
        return {"ptb_char": "ptb", "enwik8": "enwik8"}.get(task.get("dataset", "ptb_char"), "text")
    if task["name"] == "pmnist":
        return "mnist"
    return None


def tiny_overrides(mapping: dict[str, Any]) -> list[str]:
    """Overrides that shrink a recipe to two CPU steps with small sizes (valid for its parts)."""
    overrides = [
        "train.steps=2", "train.batch_size=2", "train.tbptt=5", "train.device=cpu", "train.precision=fp32",
        "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0", "eval.splits=[]",
        "model.cell.hidden_size=8",
    ]
    model, task = mapping["model"], mapping["task"]
    if model.get("embedding"):
        overrides.append("model.embedding=8")
    if model.get("addressing", {}).get("name", "none") != "none":
        overrides += ["model.memory.slots=4", "model.memory.width=4"]
    if model.get("addressing", {}).get("name") == "tardis":
        overrides += ["model.addressing.key_size=3", "model.addressing.attention_size=4"]
    overrides += {
        "copy": ["task.max_length=4"],
        "repeat_copy": ["task.max_length=3", "task.max_repeats=2"],
        "associative_recall": ["task.max_items=3"],
        "priority_sort": ["task.num_inputs=6", "task.num_outputs=4"],
    }.get(task["name"], [])
    if task["name"] == "char_lm" and task.get("dataset") == "enwik8":
        overrides += [f"task.path={ENWIK8_PREFIX}", "task.split=[0.9, 0.05, 0.05]"]
    return overrides


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    """Point manntk at ../shared/data, offline, and load each corpus once for the module.

    Also runs torch on one thread: the models are tiny, and on a busy 2-core machine
    OpenMP's worker threads make each small op milliseconds slower.
    """
    import manntk.tasks.char_lm as char_lm
    import manntk.tasks.pmnist as pmnist

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MANNTK_DATA", str(DATA))
        patch.setenv("MANNTK_OFFLINE", "1")
        patch.setenv("MANNTK_CACHE", str(tmp_path_factory.mktemp("cache")))
        if hasattr(char_lm, "load_corpus"):
            load_corpus = char_lm.load_corpus
            corpora: dict[str, Any] = {}

            def cached_corpus(config, context):
                key = repr((config, context.root))
                if key not in corpora:
                    corpora[key] = load_corpus(config, context)
                return corpora[key]

            patch.setattr(char_lm, "load_corpus", cached_corpus)
        if hasattr(pmnist, "load_mnist"):
            patch.setattr(pmnist, "load_mnist", functools.lru_cache(maxsize=None)(pmnist.load_mnist))
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def skip_without_data(need: str | None) -> None:
    if need is None:
        return
    where = {"ptb": DATA / "ptb", "mnist": DATA / "mnist", "enwik8": ENWIK8_PREFIX}.get(need)
    if where is None:
        pytest.skip(f"no test data for a {need} recipe")
    if not where.exists():
        pytest.skip(f"{need} data not found at {where} (the repository's sibling folder ../shared/data)")


@pytest.mark.parametrize("path", SHIPPED, ids=rel)
def test_every_recipe_trains_two_steps_on_cpu(path, tmp_path, shared_data):
    mapping = load_mapping(path)
    skip_without_data(data_need(mapping))
    loaded = load_recipe(path, tiny_overrides(mapping))
    result = train(loaded, tmp_path / path.stem, progress=False)
    assert result.step == 2 and result.stop_reason == "steps"
    rows = (tmp_path / path.stem / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2
