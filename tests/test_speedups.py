"""The model-side speed-ups change the speed, not the function or the saved model."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, GPT2Config, GPT2LMHeadModel
from transformers.activations import NewGELUActivation

from ftlab.training.speedups import decoder_blocks, fuse_tanh_gelu


def _gpt2(activation: str = "gelu_new") -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=3, n_head=2, activation_function=activation)
    return GPT2LMHeadModel(config).eval()


def test_fused_gelu_gives_the_same_logits_and_gradients(tmp_path: Path) -> None:
    model = _gpt2()
    batch = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    before = model(input_ids=batch, labels=batch)
    before.loss.backward()
    grads_before = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    assert fuse_tanh_gelu(model) == 3  # one per block
    assert not any(isinstance(module, NewGELUActivation) for module in model.modules())
    after = model(input_ids=batch, labels=batch)
    after.loss.backward()
    torch.testing.assert_close(after.logits, before.logits, rtol=1e-5, atol=1e-5)
    for grad_after, grad_before in zip((p.grad for p in model.parameters()), grads_before, strict=True):
        torch.testing.assert_close(grad_after, grad_before, rtol=1e-4, atol=1e-6)

    model.save_pretrained(tmp_path)  # the saved model still names its own activation
    assert AutoConfig.from_pretrained(tmp_path).activation_function == "gelu_new"


def test_other_activations_are_left_alone() -> None:
    assert fuse_tanh_gelu(_gpt2("relu")) == 0


def test_decoder_blocks_are_the_model_s_repeated_layers() -> None:
    model = _gpt2()
    assert decoder_blocks(model) == list(model.transformer.h)


def test_aligned_output_head_gives_the_same_logits_loss_and_gradients(tmp_path: Path) -> None:
    from ftlab.training.speedups import align_output_head

    model = _gpt2()
    batch = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(2))
    before = model(input_ids=batch, labels=batch)
    before.loss.backward()
    grads_before = {name: p.grad.clone() for name, p in model.named_parameters()}
    keys_before = list(model.state_dict())
    model.zero_grad()

    assert align_output_head(model) == 31  # 97 -> 128 columns computed, 97 kept
    after = model(input_ids=batch, labels=batch)
    after.loss.backward()
    assert after.logits.shape == before.logits.shape and after.logits.is_contiguous()
    torch.testing.assert_close(after.logits, before.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after.loss, before.loss)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads_before[name], rtol=1e-4, atol=1e-6)
    # The parameter itself is untouched: still tied, same shape, same saved form.
    assert model.lm_head.weight is model.transformer.wte.weight and model.lm_head.weight.shape[0] == 97
    assert list(model.state_dict()) == keys_before
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).vocab_size == 97


def test_an_aligned_head_is_left_alone() -> None:
    from ftlab.training.speedups import align_output_head

    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=1, n_head=2))
    assert align_output_head(model) == 0
