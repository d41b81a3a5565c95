"""The encoder equals HF hidden_states[-3], runs only the blocks it needs, and ignores right padding."""
import torch

from helpers import needs_smollm2


def _check_against_hf(folder, pipe):
    from transformers import AutoModelForCausalLM

    for i, (enc_cfg, encoder, tok) in enumerate(zip(pipe.config.encoders, pipe.encoders, pipe.tokenizers)):
        full = AutoModelForCausalLM.from_pretrained(folder / enc_cfg.path).eval()
        t = tok(["a red circle to the left of a blue square", "one small cat"])
        ids, mask = torch.from_numpy(t.input_ids), torch.from_numpy(t.attention_mask)
        with torch.no_grad():
            ref = full(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-3]
            hidden, pooled = encoder(ids, mask)
        valid = mask.bool()
        torch.testing.assert_close(hidden[valid], ref[valid], rtol=1e-5, atol=1e-5)
        expected_pooled = (ref * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(pooled, expected_pooled, rtol=1e-5, atol=1e-5)
        assert len(encoder.model.layers) == full.config.num_hidden_layers - 2  # the last two blocks are gone


def test_tiny_encoders_equal_hf_hidden_states_minus_3(tiny_folder, tiny_pipe):
    _check_against_hf(tiny_folder, tiny_pipe)


def test_more_right_padding_does_not_change_valid_tokens(tiny_pipe):
    for encoder, tok in zip(tiny_pipe.encoders, tiny_pipe.tokenizers):
        short = tok(["a red cat", "one green tree"])
        long = tok(["a red cat", "one green tree"], pad_to=short.input_ids.shape[1] + 9)
        with torch.no_grad():
            h1, p1 = encoder(torch.from_numpy(short.input_ids), torch.from_numpy(short.attention_mask))
            h2, p2 = encoder(torch.from_numpy(long.input_ids), torch.from_numpy(long.attention_mask))
        valid = torch.from_numpy(short.attention_mask).bool()
        torch.testing.assert_close(h2[:, : h1.shape[1]][valid], h1[valid], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p2, p1, rtol=1e-5, atol=1e-6)


@needs_smollm2
def test_smollm2_encoder_equals_hf_and_tokenizes_like_its_chat_template(smol_folder):
    from transformers import AutoTokenizer

    from lidit_export.model.pipeline import LiDiTPipeline

    pipe = LiDiTPipeline.from_pretrained(smol_folder)
    _check_against_hf(smol_folder, pipe)
    enc = pipe.config.encoders[0]
    hf_tok = AutoTokenizer.from_pretrained(smol_folder / enc.path)
    caption = "a red circle to the left of a blue square"
    messages = [{"role": "user", "content": enc.instruction + " " + caption}]
    expected = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=False)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    ours = pipe.tokenizers[0]([caption])
    assert ours.input_ids[0].tolist() == list(expected)
    assert ours.prefix_length == pipe.config.refiner.prefix_lengths[0] == 49
    assert hf_tok.convert_ids_to_tokens(int(ours.input_ids[0, 0])) == "<|im_start|>"
