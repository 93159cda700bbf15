"""cai's datasets as they are, in TRL's own trainers and CLI and in `datasets`; the Hub card; TRL-like `cai train`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import ScriptedBackend

from cai.cli.main import cli
from cai.data import DatasetWriter, PromptRecord

OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
#: What TRL's CLI needs for one quick CPU step on a tiny model (TRL defaults bf16 on, which needs use_cpu here).
TRL_FAST = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--max_length", "64", "--report_to", "none",
            "--save_strategy", "no", "--bf16", "false", "--use_cpu", "true", "--logging_steps", "1"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from threads on a shared CPU
    yield
    torch.set_num_threads(before)


def _respond(conv) -> str:
    last = conv[-1]["content"]
    if last.startswith("Rewrite"):
        return "Revision: a kinder, clearer answer."
    if last.startswith("Point out"):
        return "The response is vague."
    return f"first answer to {last}"


@pytest.fixture(scope="module")
def revisions_dir(tmp_path_factory) -> Path:
    """A real `cai generate revisions` directory (SFT rows and the preference view), on the scripted backend."""
    from cai.constitution import load_constitution
    from cai.stages.revise import ReviseConfig, run_revisions

    out = tmp_path_factory.mktemp("rev") / "revisions"
    records = [PromptRecord(messages=[{"role": "user", "content": f"question number {i}?"}]) for i in range(4)]
    constitution = load_constitution(Path(__file__).parent / "fixtures" / "tiny_constitution.yaml")
    run_revisions(records, out, constitution, ScriptedBackend(_respond),
                  config=ReviseConfig(n_revisions=1), progress=False)
    return out


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory) -> Path:
    """Preference rows as `cai generate preferences` writes them (soft labels, traces), with a failure."""
    w = DatasetWriter(tmp_path_factory.mktemp("pref") / "prefs", kind="preference", fingerprint={"t": 1})
    w.write([{"id": f"p{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}],
              "chosen": [{"role": "assistant", "content": "A helpful answer."}],
              "rejected": [{"role": "assistant", "content": "Go away."}],
              "p_chosen": [0.9, 0.6, 0.75, 0.5][i], "principle_ids": ["harm"], "position_consistent": True}
             for i in range(4)])
    w.write_failures([{"id": "f1", "reason": "position_inconsistent", "raw": ["A", "B"], "prompt": "Question x?"}])
    w.finalize({"labeller": {"position_consistency_rate": 1.0}})
    return w.dir


# --- datasets as they are -----------------------------------------------------------------------


def test_sft_rows_keep_the_trace_prompt_out_of_trls_way(revisions_dir):
    from cai.data import read_rows

    row = read_rows(revisions_dir)[0]
    assert "prompt" not in row and row["source_prompt"] == "question number 0?"
    assert row["messages"][-1]["role"] == "assistant"


def test_load_dataset_by_card_and_by_data_dir(labelled_dir, revisions_dir):
    from datasets import load_dataset

    for ds in (load_dataset(str(labelled_dir), split="train"),
               load_dataset("json", data_dir=str(labelled_dir), split="train")):
        assert len(ds) == 4 and "chosen" in ds.column_names and "reason" not in ds.column_names
    assert len(load_dataset(str(revisions_dir), split="train")) == 4
    assert "chosen" in load_dataset(str(revisions_dir), "preference", split="train").column_names
    assert len(load_dataset("json", data_dir=str(revisions_dir / ".cai" / "preference"), split="train")) == 4
    assert sorted(p.name for p in labelled_dir.iterdir()) == [".cai", "README.md", "data.jsonl"]


def test_load_dataset_by_data_dir_on_revisions_reads_only_the_sft_rows(revisions_dir):
    """The preference view sits in .cai/ (hidden, so skipped); beside data.jsonl it was read too."""
    from datasets import load_dataset

    ds = load_dataset("json", data_dir=str(revisions_dir), split="train")
    assert len(ds) == 4 and "messages" in ds.column_names
    assert not {"chosen", "rejected", "reason"} & set(ds.column_names)
    assert sorted(p.name for p in revisions_dir.iterdir()) == [".cai", "README.md", "data.jsonl"]


def test_revisions_written_by_older_cai_move_their_view(tmp_path):
    """A revisions directory with the old preference/ subdirectory: read there, moved into .cai/ on the next write."""
    from cai.constitution import load_constitution
    from cai.stages.revise import ReviseConfig, run_revisions
    from cai.stages.revision_pairs import PREFERENCE_DIR, preference_view

    out = tmp_path / "revisions"
    records = [PromptRecord(messages=[{"role": "user", "content": f"question number {i}?"}]) for i in range(2)]
    constitution = load_constitution(Path(__file__).parent / "fixtures" / "tiny_constitution.yaml")
    args = (records, out, constitution, ScriptedBackend(_respond))
    run_revisions(*args, config=ReviseConfig(n_revisions=1), progress=False)
    (out / PREFERENCE_DIR).rename(out / "preference")  # as cai wrote it before
    assert preference_view(out) == out / "preference"
    run_revisions(*args, config=ReviseConfig(n_revisions=1), progress=False)  # resumes: all done, view rebuilt
    assert preference_view(out) == out / PREFERENCE_DIR and not (out / "preference").exists()
    assert len((out / PREFERENCE_DIR / "data.jsonl").read_text().splitlines()) == 2


def test_old_layout_is_read_and_moved_on_the_next_write(tmp_path):
    from datasets import load_dataset

    from cai.data import META_FILE, read_meta

    d = tmp_path / "old"
    w = DatasetWriter(d, kind="responses", fingerprint={"m": 1})
    w.write([{"id": "1", "x": 1}])
    w.write_failures([{"id": "2", "reason": "empty", "raw": ""}])
    w.finalize({})
    for name in ("cai_dataset.json", "failures.jsonl"):  # as cai wrote them before .cai/
        os.replace(d / ".cai" / name, d / name)
    (d / ".cai").rmdir()
    assert read_meta(d)["kind"] == "responses"
    w = DatasetWriter(d, kind="responses", fingerprint={"m": 1})
    assert w.is_done("1") and w.is_done("2") and (d / META_FILE).is_file() and not (d / "cai_dataset.json").exists()
    w.finalize({})
    assert len(load_dataset("json", data_dir=str(d), split="train")) == 1


def test_card_has_hub_metadata_and_a_load_snippet_that_runs(labelled_dir, revisions_dir):
    from cai.dataset_card import check_card

    pytest.importorskip("huggingface_hub")
    for d, rows in ((labelled_dir, 4), (revisions_dir, 4)):
        meta = check_card(d / "README.md")  # huggingface_hub's DatasetCard parses it
        assert meta["license"] and meta["language"] == ["en"] and meta["task_categories"] == ["text-generation"]
        assert meta["size_categories"] == ["n<1K"] and meta["configs"][0]["data_files"] == "data.jsonl"
        card = (d / "README.md").read_text()
        snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
        scope: dict = {}
        exec(snippet, scope)  # from any working directory: the path in it is absolute
        assert len(scope["ds"]) == rows
    assert len(scope["pairs"]) == 4  # the revisions card also loads its preference view


def test_margin_column_from_soft_labels_is_what_trls_reward_loss_reads(labelled_dir, tiny_model_dir, tmp_path):
    import torch
    from trl import RewardConfig, RewardTrainer

    from cai.data import preference_margin, to_hf_dataset, with_margin

    ds = to_hf_dataset(labelled_dir, margin=True)
    assert ds["margin"] == [preference_margin(p) for p in (0.9, 0.6, 0.75, 0.5)]
    assert math.isclose(ds["margin"][0], math.log(9), abs_tol=1e-6) and ds["margin"][3] == 0.0
    assert preference_margin(1.0) == preference_margin(0.99) and with_margin({"id": 1}) == {"id": 1}
    cfg = RewardConfig(output_dir=str(tmp_path), max_length=64, report_to="none", bf16=False, use_cpu=True)
    trainer = RewardTrainer(model=str(tiny_model_dir), args=cfg, train_dataset=ds)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["margin"].tolist() == pytest.approx(ds["margin"][:2])
    with torch.no_grad():
        with_m = trainer.compute_loss(trainer.model, dict(batch))
        without = trainer.compute_loss(trainer.model, {k: v for k, v in batch.items() if k != "margin"})
    assert not torch.allclose(with_m, without)


# --- TRL's own trainers and CLI on cai's directories ----------------------------------------------


def test_trls_sfttrainer_trains_on_revision_rows(revisions_dir, tiny_model_dir, tmp_path):
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    cfg = SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, max_length=64,
                    report_to="none", bf16=False, use_cpu=True, save_strategy="no")
    trainer = SFTTrainer(model=str(tiny_model_dir), args=cfg, train_dataset=load_dataset(str(revisions_dir),
                                                                                         split="train"))
    assert trainer.train().global_step == 1


def _trl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    trl = Path(sys.executable).parent / "trl"
    r = subprocess.run([str(trl), *args], cwd=cwd, env=OFFLINE, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.parametrize("command, config", [("sft", None), ("dpo", "preference"), ("reward", "preference")])
def test_trl_cli_trains_on_a_cai_directory(command, config, revisions_dir, labelled_dir, tiny_model_dir, tmp_path):
    """`trl sft|dpo|reward --dataset_name OUT`: TRL reads the card's configs and the rows as they are."""
    out = tmp_path / f"trl-{command}"
    extra = ["--dataset_config", config] if config else []
    _trl(command, "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(revisions_dir), *extra,
         "--output_dir", str(out), *TRL_FAST, cwd=tmp_path)
    assert (out / "model.safetensors").is_file()
    if command == "reward":  # and the labeller's own directory, soft-label columns and all
        _trl("reward", "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(labelled_dir),
             "--output_dir", str(tmp_path / "trl-rm2"), *TRL_FAST, cwd=tmp_path)


def test_one_trl_recipe_for_trl_sft_and_cai_train_sft(revisions_dir, tiny_model_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_model_dir}\ndataset_name: {revisions_dir}\ndataset_train_split: train\n"
        f"output_dir: {tmp_path / 'from-recipe'}\nlearning_rate: 1e-4\nmax_steps: 1\nmax_length: 64\n"
        "per_device_train_batch_size: 2\nbf16: false\nuse_cpu: true\nreport_to: none\nsave_strategy: 'no'\n"
        "use_peft: true\nlora_r: 4\nlora_alpha: 8\n")
    _trl("sft", "--config", str(recipe), cwd=tmp_path)
    assert (tmp_path / "from-recipe" / "adapter_model.safetensors").is_file()  # TRL saves the LoRA adapter
    r = CliRunner().invoke(cli, ["train", "sft", "--config", str(recipe), "--output_dir", str(tmp_path / "cai")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "cai" / "training_summary.json").read_text())
    assert summary["base_model"] == str(tiny_model_dir) and summary["data"]["path"] == str(revisions_dir.resolve())
    assert summary["config"]["learning_rate"] == 1e-4 and summary["steps"] == 1
    assert summary["lora"] == {"r": 4, "lora_alpha": 8}  # ModelConfig's LoRA keys, over cai's LoRA


# --- a TRL-like `cai train` ------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--learning_rate", "--learning-rate"])
def test_both_spellings_of_every_trl_field(flag, revisions_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "o"
    r = CliRunner().invoke(cli, ["train", "sft", "--dataset_name", str(revisions_dir), "--model_name_or_path",
                                 str(tiny_model_dir), "--output_dir", str(out), flag, "1e-4", "--max_steps", "1",
                                 "--max-length", "64", "--lr_scheduler_type", "constant", "--no-remove-unused-columns",
                                 "--bf16", "false"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "training_summary.json").read_text())["config"]
    assert cfg["learning_rate"] == 1e-4 and cfg["lr_scheduler_type"] == "constant"
    assert cfg["remove_unused_columns"] is False and cfg["bf16"] is False


def test_every_trl_config_field_is_a_flag_with_its_help_and_default():
    import dataclasses

    from trl import DPOConfig

    r = CliRunner().invoke(cli, ["train", "dpo", "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    fields = [f.name for f in dataclasses.fields(DPOConfig) if f.init and f.name != "output_dir"]
    missing = [n for n in fields if f"--{n}" not in r.output]
    assert not missing, missing
    assert "TRL DPOConfig fields" in r.output and "--learning-rate FLOAT" in r.output
    line = next(line for line in r.output.splitlines() if "--beta" in line)
    assert "[default: 0.1]" in line or "[default: 0.1]" in r.output.split("--beta", 1)[1][:600]


@pytest.mark.parametrize("yaml_line, message", [
    ("dtype: bfloat16", "'dtype: bfloat16' is not supported (cai loads float32 weights"),
    ("load_in_4bit: true", "'load_in_4bit: True' is not supported (cai does not quantize)"),
    ("dataset_streaming: true", "'dataset_streaming: True' is not supported"),
    ("max_seq_length: 128", "unknown SFTConfig field 'max_seq_length'"),
])
def test_recipe_keys_cai_does_not_support_are_one_line(yaml_line, message, revisions_dir, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model_name_or_path: no-such-model/\ndataset_name: {revisions_dir}\n{yaml_line}\n")
    r = CliRunner().invoke(cli, ["train", "sft", "--config", str(recipe), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output and not (tmp_path / "o").exists()


def test_missing_data_names_the_recipe_key_too(tmp_path):
    r = CliRunner().invoke(cli, ["train", "sft", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "Missing option '--data'" in r.output and "--config" in r.output


def test_ppo_needs_a_reward_model_from_a_flag_or_the_recipe(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\n")
    r = CliRunner().invoke(cli, ["train", "ppo", "--prompts", str(prompts), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "Missing option '--reward-model'" in r.output
