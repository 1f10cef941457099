"""A non-finite loss or gradient stops training with the term / parameter and the step named,
before anything is written: the newest checkpoint stays the last good state."""

from __future__ import annotations

import pytest
import torch

from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.engine.config import load_train_config
from cmt_deeplab.engine.trainer import Trainer
from cmt_deeplab.engine.training_state import latest_checkpoint, list_checkpoints
from cmt_deeplab.model_dir import read_safetensors


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(root, "train", num_images=8, size=40, seed=2)
    return root


def _trainer(data_root, out, steps=4, save_every=2):
    config = load_train_config(None, [
        "model.name=cmt-deeplab-tiny", "model.num_slots=8", f"data.root={data_root}",
        "data.train_split=train", "input.crop=33", "run.batch_size=2", f"run.steps={steps}",
        f"run.save_every={save_every}", "run.num_workers=0", "run.log_every=1",
        "schedule.warmup_steps=0",
    ])
    return Trainer(config, out, progress=False)


def test_nan_loss_names_the_term_and_step_and_keeps_the_last_checkpoint(data_root, tmp_path):
    trainer = _trainer(data_root, tmp_path / "run")

    def poison(module, inputs, outputs):
        if trainer.step == 2:  # computing step 3
            outputs["semantic_logits"] = outputs["semantic_logits"] * float("nan")
        return outputs

    trainer.model.register_forward_hook(poison)
    with pytest.raises(FloatingPointError, match=r"loss_semantic.*|step 3") as error:
        trainer.train()
    message = str(error.value)
    assert "'loss_semantic'" in message and "at step 3" in message
    assert "step_0000002" in message  # points at the last good state
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [2]
    assert not (tmp_path / "run" / "model.safetensors").exists()
    # The failed step changed nothing: the weights equal the step-2 state.
    saved = read_safetensors(latest_checkpoint(tmp_path / "run") / "model.safetensors")
    current = trainer.model.state_dict()
    params = dict(trainer.model.named_parameters())
    assert all(torch.equal(saved[name], current[name]) for name in params)


def test_nan_gradient_names_the_parameter(data_root, tmp_path):
    trainer = _trainer(data_root, tmp_path / "run")
    centers = trainer.model.centers.weight
    centers.register_hook(lambda grad: grad * float("nan") if trainer.step == 1 else grad)
    before = centers.detach().clone()
    with pytest.raises(FloatingPointError,
                       match=r"non-finite gradient of parameter 'centers.weight' at step 2"):
        trainer.train()
    assert list_checkpoints(tmp_path / "run") == []  # save_every 2: nothing was due yet
    assert not torch.equal(centers.detach(), before)  # step 1 happened, step 2 did not
    assert trainer.step == 1


def test_cli_reports_a_non_finite_loss_with_exit_code_1(data_root, tmp_path, monkeypatch,
                                                         capsys):
    from cmt_deeplab.cli import main as cli_main
    from cmt_deeplab.losses import criterion

    def nan_loss(self, outputs, aux_outputs, targets):
        zero = outputs["pred_logits"].sum() * 0
        return {"loss_pq_dice": zero + float("inf"), "loss_mask_id": zero}

    monkeypatch.setattr(criterion.PanopticCriterion, "_all_losses", nan_loss)
    code = cli_main.main([
        "train", "--model", "cmt-deeplab-tiny", "--data", str(data_root), "--train-split",
        "train", "--crop", "33", "--batch-size", "2", "--steps", "2", "--num-workers", "0",
        "--out", str(tmp_path / "run"), "--no-progress", "--set", "model.num_slots=8",
    ])
    assert code == 1
    err = capsys.readouterr().err
    assert "loss term 'loss_pq_dice' is not finite" in err and "at step 1" in err
