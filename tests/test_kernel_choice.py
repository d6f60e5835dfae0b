"""Kernel choice per machine: every alternative kernel computes what PyTorch's computes, the faster one is taken (by a
fake clock here: speed itself is measured by benchmarks/efficiency.py), and choices are kept per machine on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cascadeclip.inference import fast_path, kernel_choice
from cascadeclip.inference.kernel_choice import PYTORCH, ROUNDS, KernelChoice


class FakeClock:
    """Every reading is one second after the previous one, so each timed call lasts 1 s, plus whatever the kernels
    wrapped by `slowed` add."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now

    def slowed(self, kernel, extra_seconds: float, calls: list):
        def timed(*args, **kwargs):
            calls.append(kernel.__name__)
            self.now += extra_seconds
            return kernel(*args, **kwargs)

        return timed


def faked_choice(monkeypatch, kernel_name: str, extra_seconds: float) -> tuple[KernelChoice, list]:
    """A choice (in memory) timed by a fake clock on which fast_path's `kernel_name` takes `extra_seconds` more than
    PyTorch's kernel (negative: less); the list records the alternative's calls."""
    clock, calls = FakeClock(), []
    monkeypatch.setattr(fast_path, kernel_name, clock.slowed(getattr(fast_path, kernel_name), extra_seconds, calls))
    return KernelChoice(None, timer=clock), calls


def strided_heads(batch: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 4, L, 16) heads split off a (B, L, 64) tensor, as the models do: strided, not contiguous."""
    return torch.randn(batch, length, 4 * 16).unflatten(-1, (4, 16)).transpose(1, 2).to(dtype)


def _linear_case(dtype):
    x, weight, bias = torch.randn(2, 9, 48)[:, 1:].to(dtype), torch.randn(24, 48).to(dtype), torch.randn(24).to(dtype)
    expected = lambda: F.linear(x.double(), weight.double(), bias.double())  # noqa: E731
    return "onednn_linear", "onednn", lambda: F.linear(x, weight, bias), expected


def _matmul_case(dtype):
    x, matrix = torch.randn(2, 9, 48)[:, 1:].to(dtype), torch.randn(48, 24).to(dtype)
    return "onednn_linear", "onednn", lambda: x @ matrix, lambda: x.double() @ matrix.double()


def _attention_case(dtype):
    q, k, v = strided_heads(3, 300, dtype), strided_heads(3, 270, dtype), strided_heads(3, 270, dtype)
    expected = lambda: F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.3)  # noqa: E731
    return "_attention_by_products", "products", lambda: F.scaled_dot_product_attention(q, k, v, scale=0.3), expected


def _bilinear_case(dtype):
    x = torch.randn(2, 7, 12, 10).to(dtype)
    resize = lambda t: F.interpolate(t, size=(50, 41), mode="bilinear", align_corners=False)  # noqa: E731
    return "_channels_last_resize", "channels_last", lambda: resize(x), lambda: resize(x.double())


CASES = {"linear": _linear_case, "matmul": _matmul_case, "attention": _attention_case, "bilinear": _bilinear_case}
# fp32: float rounding of sums over at most 300 terms in another order; bf16: 8-bit mantissas of inputs and products.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES)
def test_each_alternative_kernel_equals_pytorch_and_is_taken_where_faster(case, dtype, monkeypatch):
    torch.manual_seed(0)
    kernel_name, choice_name, operation, expected = CASES[case](dtype)
    choice, calls = faked_choice(monkeypatch, kernel_name, extra_seconds=-0.5)
    with torch.inference_mode(), fast_path.fast_cpu_kernels(choice):
        routed = operation()
    if kernel_name == "onednn_linear" and not fast_path.onednn_runs(dtype):  # bf16 without AVX-512: not offered
        assert calls == [] and choice._choices in (None, {})
    else:
        assert list(choice._choices.values()) == [choice_name]
        assert len(calls) == 1 + ROUNDS + 1  # measured (one untimed call, then timed rounds), then run
    assert routed.dtype == dtype
    torch.testing.assert_close(routed.double(), expected(), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


# Run where oneDNN is held to AVX2 (ONEDNN_MAX_CPU_ISA), as on a CPU without AVX-512, which has no bf16 linear kernel.
WITHOUT_BF16_KERNELS = """
import runpy, sys, torch
import torch.nn.functional as F
from cascadeclip.inference import fast_path
from cascadeclip.inference.kernel_choice import KernelChoice
assert not fast_path.onednn_runs(torch.bfloat16) and fast_path.onednn_runs(torch.float32)
x, weight = torch.randn(16, 48, dtype=torch.bfloat16), torch.randn(24, 48, dtype=torch.bfloat16)
choice = KernelChoice(None)
with torch.inference_mode(), fast_path.fast_cpu_kernels(choice):
    routed = F.linear(x, weight)
assert not choice._choices, choice._choices  # bf16 linear layers are not offered to oneDNN
torch.testing.assert_close(routed, F.linear(x, weight))  # PyTorch's own kernel: the same result
peaks = runpy.run_path(sys.argv[1])["matmul_peaks"](64, 1)
assert set(peaks["bf16"]) == {"torch.mm"} and set(peaks["fp32"]) == {"torch.mm", "oneDNN linear"}, peaks
"""


@pytest.mark.skipif(not fast_path.onednn_available(), reason="no alternative kernel to choose without oneDNN")
def test_a_cpu_without_onednn_bf16_kernels_keeps_bf16_on_pytorchs_and_the_benchmark_runs():
    benchmark = Path(__file__).parents[1] / "benchmarks" / "efficiency.py"
    environment = os.environ | {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_BF16_KERNELS, str(benchmark)], env=environment, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.parametrize("extra_seconds", [1.0, -0.02], ids=["slower", "faster by less than the margin"])
def test_pytorch_kernel_is_kept_unless_the_alternative_is_clearly_faster(extra_seconds, monkeypatch):
    torch.manual_seed(0)
    _, _, operation, expected = _linear_case(torch.float32)
    choice, calls = faked_choice(monkeypatch, "onednn_linear", extra_seconds)
    with torch.inference_mode(), fast_path.fast_cpu_kernels(choice):
        first = operation()
        measured = len(calls)
        operation()
    assert list(choice._choices.values()) == [PYTORCH]
    assert measured == 1 + ROUNDS and len(calls) == measured  # measured once; then PyTorch's kernel ran each time
    torch.testing.assert_close(first.double(), expected(), atol=1e-5, rtol=1e-5)  # float rounding, 48 terms


def test_linear_under_autograd_runs_its_products_on_the_chosen_kernels_and_has_pytorchs_gradients(monkeypatch):
    torch.manual_seed(0)
    choice, calls = faked_choice(monkeypatch, "onednn_linear", extra_seconds=-0.5)
    tokens, weight, bias = (torch.randn(*shape, requires_grad=True) for shape in ((2, 9, 48), (24, 48), (24,)))
    x, upstream = tokens[:, 1:], torch.randn(2, 8, 24)  # a strided view, as the encoder's slices are
    with fast_path.fast_cpu_kernels(choice):
        (F.linear(x, weight, bias) * upstream).sum().backward()
    threads = torch.get_num_threads()
    assert sorted(choice._choices) == [
        f"linear float32 threads={threads} rows=16 24->48 transposed",  # the input's gradient
        f"linear float32 threads={threads} rows=16 48->24",  # the output
    ]
    assert set(choice._choices.values()) == {"onednn"} and len(calls) == 2 * (1 + ROUNDS + 1)
    routed = [t.grad for t in (tokens, weight, bias)]
    for t in (tokens, weight, bias):
        t.grad = None
    (F.linear(tokens[:, 1:], weight, bias) * upstream).sum().backward()
    for gradient, t in zip(routed, (tokens, weight, bias), strict=True):
        torch.testing.assert_close(gradient, t.grad, atol=1e-5, rtol=1e-5)  # float rounding of sums of 48 terms


@pytest.mark.parametrize("input_needs_gradient", [True, False], ids=["input's gradient", "weight's only"])
def test_linear_under_autograd_where_pytorchs_kernels_are_chosen_is_pytorchs_own(input_needs_gradient, monkeypatch):
    choice, calls = faked_choice(monkeypatch, "onednn_linear", extra_seconds=1.0)
    x = torch.randn(2, 8, 48, requires_grad=input_needs_gradient)
    weight = torch.randn(24, 48, requires_grad=True)
    random_state = torch.get_rng_state()
    with fast_path.fast_cpu_kernels(choice):
        out = F.linear(x, weight)
    # Measuring drew no numbers from the global generator: a run's dropout must not depend on what was measured.
    assert torch.equal(torch.get_rng_state(), random_state)
    threads = torch.get_num_threads()
    measured = [f"linear float32 threads={threads} rows=16 48->24"]  # the output
    if input_needs_gradient:  # and the input's gradient, on a random one, before the backward needs it
        measured.insert(0, f"linear float32 threads={threads} rows=16 24->48 transposed")
    assert sorted(choice._choices) == measured and set(choice._choices.values()) == {PYTORCH}
    assert len(calls) == len(measured) * (1 + ROUNDS)  # oneDNN ran only to be measured
    assert "LinearOnChosenKernels" not in type(out.grad_fn).__name__  # PyTorch's own backward
    out.sum().backward()
    assert weight.grad is not None and len(calls) == len(measured) * (1 + ROUNDS)


def test_attention_under_autograd_and_masked_attention_stay_with_pytorch(monkeypatch):
    choice, calls = faked_choice(monkeypatch, "_attention_by_products", extra_seconds=-0.5)
    q = strided_heads(2, 30, torch.float32).requires_grad_()
    with fast_path.fast_cpu_kernels(choice):
        F.scaled_dot_product_attention(q, q, q).sum().backward()  # training: PyTorch's kernels, with their gradients
        with torch.no_grad():
            F.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(30, 30, dtype=torch.bool))
    assert calls == [] and choice._choices in (None, {}) and q.grad is not None


def equally_fast() -> dict:
    """Candidates that take the same time on a FakeClock: PyTorch's kernel is kept."""
    return {PYTORCH: lambda: None, "other": lambda: None}


def other_faster(clock: FakeClock):
    """A maker of candidates of which "other" takes 0.5 s less on `clock`."""
    return lambda: {PYTORCH: lambda: None, "other": lambda: setattr(clock, "now", clock.now - 0.5)}


def test_choices_are_kept_on_disk_per_machine(tmp_path, monkeypatch):
    def forbidden():
        raise AssertionError("a kept choice was measured again")

    clock = FakeClock()
    first = KernelChoice(tmp_path, timer=clock)
    assert first.choose("kind A", other_faster(clock))
    assert first.choose("kind B", equally_fast) == PYTORCH
    assert json.loads(first.path.read_text())["choices"] == {"kind A": "other", "kind B": PYTORCH}
    again = KernelChoice(tmp_path)  # a later process on the same machine
    assert again.choose("kind A", forbidden) == "other"

    monkeypatch.setattr(kernel_choice, "cpu_model_and_flags", lambda: ("Another CPU", frozenset({"amx_bf16"})))
    elsewhere = KernelChoice(tmp_path, timer=FakeClock())
    assert elsewhere.path != first.path and elsewhere.choose("kind A", equally_fast)
    assert len(list(tmp_path.glob("*.json"))) == 2 and not list(tmp_path.glob(".*"))  # no temporary files left


def test_processes_of_one_machine_measure_each_kind_once_and_keep_each_others_choices(tmp_path):
    def forbidden():
        raise AssertionError("a kind another process had measured was measured again")

    clock = FakeClock()
    first, second = KernelChoice(tmp_path, timer=clock), KernelChoice(tmp_path, timer=clock)  # two processes
    assert first.choose("kind B", equally_fast) == PYTORCH
    assert second.choose("kind B", forbidden) == PYTORCH  # its first look at the file
    assert first.choose("kind A", other_faster(clock)) == "other"  # measured after the second read the file
    assert second.choose("kind A", forbidden) == "other"  # found in the file, not measured again
    assert second.choose("kind C", equally_fast) == PYTORCH
    # Each process added its kinds to the file; none wrote over the other's.
    saved = json.loads(first.path.read_text())["choices"]
    assert saved == {"kind A": "other", "kind B": PYTORCH, "kind C": PYTORCH}


def test_a_run_keeps_the_choices_it_recorded_over_the_machines(tmp_path):
    def forbidden():
        raise AssertionError("a recorded choice was measured again")

    clock = FakeClock()
    machine = KernelChoice(tmp_path / "machine", timer=clock)
    run = machine.recorded_in(tmp_path / "run" / "kernel_choices.json")
    assert run.choose("kind A", other_faster(clock)) == "other"  # measured once, known to both
    assert machine.choose("kind A", forbidden) == "other"
    assert machine.choose("kind B", equally_fast) == PYTORCH
    assert json.loads(run.record.read_text())["choices"] == {"kind A": "other"}  # only what the run was given

    # The machine's file is remeasured (say, after an update) and now says otherwise; the resumed run keeps its own.
    remeasured = {"kind A": PYTORCH, "kind B": PYTORCH}
    machine.path.write_text(json.dumps({"machine": machine.machine, "choices": remeasured}))
    resumed = KernelChoice(tmp_path / "machine").recorded_in(run.record)
    assert resumed.choose("kind A", forbidden) == "other"
    assert resumed.choose("kind B", forbidden) == PYTORCH  # from the machine's file
    assert json.loads(run.record.read_text())["choices"] == {"kind A": "other", "kind B": PYTORCH}


@pytest.mark.parametrize(
    "content",
    ["{not json", '["a list"]', '{"machine": "another", "choices": {"kind A": "other"}}', "{}"],
    ids=["corrupt", "wrong type", "another machine", "no choices"],
)
def test_a_choices_file_that_cannot_be_used_is_ignored_and_replaced(content, tmp_path):
    choice = KernelChoice(tmp_path, timer=FakeClock())  # equal times: PyTorch's kernel
    choice.path.write_text(content.replace('"another"', json.dumps({"cpu": "x"})))
    assert choice.choose("kind A", equally_fast) == PYTORCH  # measured afresh
    assert json.loads(choice.path.read_text())["choices"] == {"kind A": PYTORCH}


def test_a_folder_that_cannot_be_written_costs_a_warning(tmp_path):
    (tmp_path / "file").write_text("")
    choice = KernelChoice(tmp_path / "file" / "choices", timer=FakeClock())  # no folder can be made inside a file
    with pytest.warns(UserWarning, match="kernel choices not saved"):
        assert choice.choose("kind A", equally_fast) == PYTORCH
    assert choice.choose("kind B", equally_fast) == PYTORCH  # warned once
