"""The -ngl planner as a pure function over GGUF tensor sizes and made-up devices."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmrun.engine.offload import (
    GIB,
    MIB,
    Device,
    ModelShape,
    check_host_context,
    kv_bytes,
    plan_offload,
)
from llmrun.errors import BadOption
from llmrun.ggufinfo import read_info


@pytest.fixture
def llmrun(llmrun_inprocess):
    """In-process: these tests check output and exit codes only, not signals or terminals."""
    return llmrun_inprocess


@pytest.fixture(scope="module")
def smol(smollm2: Path) -> ModelShape:
    return ModelShape.from_gguf(read_info(smollm2))


# A 7B-like model: 32 blocks of 200 MiB, an output layer of 250 MiB, GQA 8 of 32 heads.
BIG = ModelShape(
    n_layers=32,
    layer_bytes=(200 * MIB,) * 32,
    output_bytes=250 * MIB,
    n_embd=4096,
    n_vocab=32768,
    n_head=32,
    kv_elems_per_token=8 * (128 + 128),
    n_ctx_train=32768,
)


def gpu(free_gib: float, total_gib: float = 80.0, name: str = "GPU0") -> Device:
    return Device(name, int(free_gib * GIB), int(total_gib * GIB))


def test_shape_from_the_real_gguf(smol: ModelShape) -> None:
    assert smol.n_layers == 30
    assert smol.n_vocab == 49152 and smol.n_embd == 576
    assert smol.kv_elems_per_token == 3 * (64 + 64)  # 3 KV heads of 64
    assert all(b > 0 for b in smol.layer_bytes)
    assert smol.output_bytes > 0  # tied embeddings: token_embd doubles as output


def test_kv_estimate_matches_llama_cpp(smollm2: Path) -> None:
    """Our KV size is what llama.cpp itself reports allocating."""
    from llmrun.engine import load_model, logs
    from llmrun.options import Load

    shape = ModelShape.from_gguf(read_info(smollm2))
    for ctx, ctk, ctv, fa in ((1024, "f16", "f16", "auto"), (2048, "q8_0", "q8_0", "on")):
        with load_model(
            smollm2, Load(ctx_size=ctx, cache_type_k=ctk, cache_type_v=ctv, flash_attn=fa)
        ):
            text = "".join(line for _, line in logs._recent)
        reported = [float(m) for m in re.findall(r"KV buffer size =\s*([\d.]+) MiB", text)]
        assert reported, "llama.cpp did not report its KV buffer"
        ours = kv_bytes(shape, ctx, shape.n_layers, ctk, ctv) / MIB
        assert reported[-1] == pytest.approx(ours, rel=0.01)


def test_no_gpu_means_zero(smol: ModelShape) -> None:
    for request in ("auto", "all", 7):
        plan = plan_offload(smol, [], ctx=4096, request=request)
        assert plan.n_gpu_layers == 0


def test_everything_fits_on_a_big_gpu(smol: ModelShape) -> None:
    plan = plan_offload(smol, [gpu(70)], ctx=4096)
    assert plan.n_gpu_layers == smol.n_layers + 1
    assert plan.fits


@pytest.mark.parametrize("free_gib", [0.5, 1, 2, 3, 4, 6, 8, 12, 24])
@pytest.mark.parametrize("ctx", [2048, 8192, 32768])
@pytest.mark.parametrize("kv", ["f16", "q8_0", "q4_0"])
def test_auto_is_the_most_that_fits_and_never_over_budget(
    free_gib: float, ctx: int, kv: str
) -> None:
    device = gpu(free_gib, total_gib=max(free_gib, 8))
    plan = plan_offload(BIG, [device], ctx=ctx, cache_type_k=kv, cache_type_v=kv)
    gpu_part = plan.placements[0]
    assert gpu_part.total <= device.budget or plan.n_gpu_layers == 0
    assert plan.fits
    if plan.n_gpu_layers < BIG.n_layers + 1:
        one_more = plan_offload(
            BIG, [device], ctx=ctx, request=plan.n_gpu_layers + 1, cache_type_k=kv, cache_type_v=kv
        )
        assert not one_more.fits


def test_more_memory_smaller_context_and_cheaper_kv_never_offload_less() -> None:
    by_memory = [plan_offload(BIG, [gpu(g, 24)], ctx=8192).n_gpu_layers for g in (2, 4, 6, 8, 16)]
    assert by_memory == sorted(by_memory) and by_memory[0] < by_memory[-1]
    by_ctx = [plan_offload(BIG, [gpu(6, 24)], ctx=c).n_gpu_layers for c in (32768, 16384, 4096)]
    assert by_ctx == sorted(by_ctx) and by_ctx[0] < by_ctx[-1]
    f16 = plan_offload(BIG, [gpu(6, 24)], ctx=32768).n_gpu_layers
    q8 = plan_offload(
        BIG, [gpu(6, 24)], ctx=32768, cache_type_k="q8_0", cache_type_v="q8_0"
    ).n_gpu_layers
    assert q8 > f16


def test_two_gpus_split_by_free_memory() -> None:
    devices = [gpu(12, 24, "GPU0"), gpu(4, 24, "GPU1")]
    plan = plan_offload(BIG, devices, ctx=4096)
    assert plan.n_gpu_layers == BIG.n_layers + 1
    first, second = plan.placements[0], plan.placements[1]
    assert first.layers + second.layers == plan.n_gpu_layers
    assert first.layers == pytest.approx(3 * second.layers, abs=2)
    assert first.fits and second.fits


def test_all_fails_early_with_the_numbers() -> None:
    with pytest.raises(BadOption) as e:
        plan_offload(BIG, [gpu(3, 24)], ctx=8192, request="all")
    message = str(e.value)
    assert "-ngl all needs" in message and "GiB" in message and "-ngl auto" in message
    assert plan_offload(BIG, [gpu(20, 24)], ctx=8192, request="all").n_gpu_layers == 33


def test_a_number_is_exact_and_capped() -> None:
    assert plan_offload(BIG, [gpu(1, 24)], ctx=4096, request=5).n_gpu_layers == 5
    assert plan_offload(BIG, [gpu(1, 24)], ctx=4096, request=999).n_gpu_layers == 33


def test_context_that_cannot_fit_in_host_memory_names_the_largest_that_does() -> None:
    plan = plan_offload(BIG, [], ctx=131072)
    with pytest.raises(BadOption) as e:
        check_host_context(plan, BIG, 4 * GIB, "f16", "f16")
    largest = int(re.search(r"-c (\d+)", str(e.value)).group(1))
    assert "131072" in str(e.value)
    assert 0 < largest < 131072
    check_host_context(plan_offload(BIG, [], ctx=largest), BIG, 4 * GIB, "f16", "f16")
    with pytest.raises(BadOption):
        check_host_context(plan_offload(BIG, [], ctx=largest + 256), BIG, 4 * GIB, "f16", "f16")


def test_run_verbose_prints_the_plan(llmrun, smollm2: Path) -> None:
    r = llmrun("run", str(smollm2), "Hi", "-n", "2", "--temp", "0", "-v")
    assert r.code == 0, r.stderr
    assert re.search(r"offload: \d+/31 layers on GPU", r.stderr)
    assert "KV" in r.stderr


def test_run_refuses_a_context_larger_than_memory_before_loading(llmrun, smollm2: Path) -> None:
    r = llmrun("run", str(smollm2), "Hi", "-c", "4000000")
    assert r.code == 2
    assert "KV cache" in r.stderr and "use -c" in r.stderr
    assert "llama" not in r.stderr.replace("llmrun", "")  # refused before llama.cpp loaded anything


# ---------------------------------------------------------------- MoE: experts on the host first

# A MoE model: 8 blocks of 1000 MiB of which 900 MiB are experts, an output layer of 100 MiB.
MOE = ModelShape(
    n_layers=8,
    layer_bytes=(1000 * MIB,) * 8,
    output_bytes=100 * MIB,
    n_embd=2048,
    n_vocab=32768,
    n_head=16,
    kv_elems_per_token=4 * (128 + 128),
    n_ctx_train=32768,
    expert_bytes=(900 * MIB,) * 8,
)


def test_moe_that_fits_keeps_its_experts_on_the_gpu() -> None:
    plan = plan_offload(MOE, [gpu(40)], ctx=4096)
    assert plan.n_gpu_layers == 9 and plan.cpu_moe == 0


@pytest.mark.parametrize("free_gib", [3, 4.5, 6, 8])
def test_moe_on_a_small_gpu_puts_experts_on_the_host_not_layers(free_gib: float) -> None:
    """Attention and shared weights all go to the GPU; as few blocks' experts as needed stay
    on the host, and the GPU's share is never over its budget."""
    plan = plan_offload(MOE, [gpu(free_gib, total_gib=24)], ctx=4096)
    device, cpu = plan.placements
    assert plan.n_gpu_layers == 9, plan.describe()  # every layer on the GPU
    assert 0 < plan.cpu_moe <= 8 and device.fits
    assert cpu.weight_bytes == plan.cpu_moe * 900 * MIB  # the host holds experts only
    assert device.weight_bytes == 8 * 1000 * MIB + 100 * MIB - cpu.weight_bytes
    one_fewer = plan_offload(MOE, [gpu(free_gib, 24)], ctx=4096, n_cpu_moe=plan.cpu_moe - 1)
    assert not one_fewer.placements[0].fits or one_fewer.n_gpu_layers < 9  # the fewest
    assert f"experts of the first {plan.cpu_moe} layers on the CPU" in plan.describe()


def test_moe_on_a_tiny_gpu_keeps_all_experts_home_and_offloads_what_fits() -> None:
    plan = plan_offload(MOE, [gpu(1.2, total_gib=8)], ctx=4096)
    assert plan.cpu_moe == 8 and 0 < plan.n_gpu_layers < 9
    assert plan.placements[0].fits
    assert plan.placements[0].weight_bytes <= plan.n_gpu_layers * 100 * MIB


def test_n_cpu_moe_is_taken_as_given() -> None:
    plan = plan_offload(MOE, [gpu(40)], ctx=4096, n_cpu_moe=3)
    assert plan.cpu_moe == 3 and plan.n_gpu_layers == 9
    assert plan.placements[1].weight_bytes == 3 * 900 * MIB
    assert plan_offload(MOE, [gpu(40)], ctx=4096, n_cpu_moe=99).cpu_moe == 8
    assert plan_offload(BIG, [gpu(40)], ctx=4096, n_cpu_moe=3).cpu_moe == 0  # dense: no experts


def test_moe_with_no_gpu_still_takes_n_cpu_moe() -> None:
    assert plan_offload(MOE, [], ctx=4096, n_cpu_moe=1).cpu_moe == 1
    assert plan_offload(MOE, [], ctx=4096).cpu_moe == 0


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmrun.quantize import quantize
    from tests.quantize_fixtures import tiny_checkpoint

    out = tmp_path_factory.mktemp("moe") / "moe-Q8_0.gguf"
    return quantize(str(tiny_checkpoint("qwen3moe")), type="Q8_0", output=out, check=False).path


def test_shape_of_a_real_moe_gguf(tiny_moe: Path) -> None:
    shape = ModelShape.from_gguf(read_info(tiny_moe))
    assert len(shape.expert_bytes) == shape.n_layers
    assert all(0 < e < b for e, b in zip(shape.expert_bytes, shape.layer_bytes, strict=True))


@pytest.mark.slow
def test_n_cpu_moe_loads_a_real_moe_model_on_cpu(tiny_moe: Path, llmrun) -> None:
    """llama.cpp is given the override: block 0's experts are placed in the CPU buffer."""
    r = llmrun("run", str(tiny_moe), "hi", "-n", "4", "--n-cpu-moe", "1", "-v")
    assert r.code == 0, r.stderr
    assert "experts of the first 1 layers on the CPU" in r.stderr
    overridden = re.findall(
        r"tensor (blk\.\d+\.\w+)\.weight .* buffer type overridden to CPU", r.stderr
    )
    assert sorted(overridden) == [
        "blk.0.ffn_down_exps",
        "blk.0.ffn_gate_exps",
        "blk.0.ffn_up_exps",
    ]
    bad = llmrun("run", str(tiny_moe), "hi", "--n-cpu-moe", "-1")
    assert bad.code == 2 and bad.stderr == "error: --n-cpu-moe must be >= 0, got -1\n"


def test_a_projector_takes_room_on_the_first_gpu() -> None:
    """reserve(): the projector's bytes leave the first device's budget, the others alone."""
    from llmrun.engine.offload import reserve

    gpus = [Device("GPU0", 8 * GIB, 16 * GIB), Device("GPU1", 8 * GIB, 16 * GIB)]
    taken = reserve(gpus, 3 * GIB)
    assert [d.free for d in taken] == [5 * GIB, 8 * GIB]
    assert taken[0].budget == gpus[0].budget - 3 * GIB
    assert reserve(gpus, 0) == gpus and reserve([], GIB) == []
    assert reserve(gpus, 100 * GIB)[0].free == 0
