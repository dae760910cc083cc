"""`load_state(..., into=state)` for ckpt's own state file, and the checked read path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import ckpt

torch = pytest.importorskip("torch")
import ckpt.torch._plan as torch_plan  # noqa: E402 - after the skip
import ckpt.torch._read as torch_read  # noqa: E402
from ckpt.torch import STATE_FILE, load_state, save_state  # noqa: E402

pytestmark = pytest.mark.torch


def _state() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(3)
    return {
        "model": {"w": torch.rand(64, 32, generator=gen), "b": torch.rand(32, generator=gen)},
        "optim": {"step": 7, "lr": 0.5, "moments": [torch.rand(8, generator=gen), None]},
        "pair": (torch.arange(5), "name"),
        "epoch": 2,
    }


def _template() -> dict[str, Any]:
    return {
        "model": {"w": torch.zeros(64, 32), "b": torch.zeros(32)},
        "optim": {"step": 0, "lr": 0.0, "moments": [torch.zeros(8), None]},
        "pair": (torch.zeros(5, dtype=torch.int64), ""),
        "epoch": 0,
    }


def test_into_fills_the_given_tensors_in_place_and_sets_plain_values(tmp_path: Path) -> None:
    state = _state()
    save_state(tmp_path, state)
    into = _template()
    w, b, m, p = into["model"]["w"], into["model"]["b"], into["optim"]["moments"], into["pair"][0]
    pointers = [t.data_ptr() for t in (w, b, m[0], p)]
    loaded = load_state(tmp_path, into=into)
    assert loaded is into
    assert into["model"]["w"] is w
    assert into["model"]["b"] is b
    assert into["optim"]["moments"] is m
    assert m[0] is not None
    assert into["pair"][0] is p  # a tuple is rebuilt around the same tensor
    assert [t.data_ptr() for t in (w, b, m[0], p)] == pointers  # ...and the same memory
    assert torch.equal(w, state["model"]["w"])
    assert torch.equal(b, state["model"]["b"])
    assert torch.equal(m[0], state["optim"]["moments"][0])
    assert torch.equal(p, torch.arange(5))
    assert into["optim"]["step"] == 7
    assert into["optim"]["lr"] == 0.5
    assert into["epoch"] == 2
    assert into["pair"][1] == "name"


def test_into_loads_only_what_it_holds(tmp_path: Path) -> None:
    save_state(tmp_path, _state())
    into = {"model": {"w": torch.zeros(64, 32)}}
    load_state(tmp_path, into=into)
    assert list(into) == ["model"]
    assert list(into["model"]) == ["w"]
    assert float(into["model"]["w"].sum()) != 0.0


def test_into_parameters_strided_and_tied_targets(tmp_path: Path) -> None:
    state = {"w": torch.rand(16, 8), "v": torch.rand(6, 4), "tied": torch.rand(3)}
    state["again"] = state["tied"]  # one tensor in the file, two places
    save_state(tmp_path, state)
    model = torch.nn.Linear(8, 16, bias=False)  # a Parameter that requires grad
    strided = torch.zeros(4, 6).t()  # not contiguous: goes through the host buffer
    into = {"w": model.weight, "v": strided, "tied": torch.zeros(3), "again": torch.zeros(3)}
    load_state(tmp_path, into=into)
    assert into["w"] is model.weight
    assert model.weight.requires_grad
    assert torch.equal(model.weight.detach(), state["w"])
    assert torch.equal(strided, state["v"])
    assert not strided.is_contiguous()
    assert torch.equal(into["tied"], state["tied"])
    assert torch.equal(into["again"], state["tied"])
    assert into["tied"] is not into["again"]  # two of the caller's tensors, both filled


@pytest.mark.parametrize(
    ("into", "message"),
    [
        pytest.param(
            {"model": {"w": torch.zeros(32, 64), "b": torch.zeros(32)}},
            r"`model\.w`.*float32 of shape \[64, 32\], `into`'s is torch\.float32 of shape "
            r"\[32, 64\]",
            id="shape",
        ),
        pytest.param(
            {"model": {"w": torch.zeros(64, 32, dtype=torch.float16)}},
            r"`model\.w`.*`into`'s is torch\.float16",
            id="dtype",
        ),
        pytest.param(
            {"model": {"w": torch.zeros(64, 32), "gamma": torch.zeros(1)}},
            r"`into` holds `model\.gamma`, which the checkpoint does not",
            id="missing",
        ),
        pytest.param({"epoch": torch.zeros(1)}, r"tensor at `epoch`.*holds a value", id="kind"),
        pytest.param(
            {"optim": {"moments": [torch.zeros(8)]}},
            r"a list of 1 at `optim\.moments`.*a list of 2",
            id="length",
        ),
        pytest.param({"model": {"w": 0}}, r"int at `model\.w`.*holds a tensor", id="not-tensor"),
    ],
)
def test_a_mismatched_into_names_the_key_and_changes_nothing(
    tmp_path: Path, into: dict[str, Any], message: str
) -> None:
    save_state(tmp_path, _state())
    before = {
        key: value.clone() if isinstance(value, torch.Tensor) else value
        for key, value in into.get("model", {}).items()
    }
    with pytest.raises(ckpt.SerializationError, match=message):
        load_state(tmp_path, into=into)
    for key, value in before.items():  # every tensor of `into` is untouched
        held = into["model"][key]
        assert held == value if not isinstance(value, torch.Tensor) else torch.equal(held, value)


def test_into_must_be_a_dict(tmp_path: Path) -> None:
    save_state(tmp_path, _state())
    with pytest.raises(TypeError, match="`into` must be a dict"):
        load_state(tmp_path, into=[torch.zeros(1)])  # type: ignore[arg-type]


def test_a_damaged_file_loaded_into_says_the_tensors_are_unchecked(tmp_path: Path) -> None:
    save_state(tmp_path, {"w": torch.rand(1 << 20)})  # 4 MiB: hashed on the helper thread
    path = tmp_path / STATE_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.ChecksumMismatchError, match="`into` hold its unchecked bytes"):
        load_state(tmp_path, into={"w": torch.zeros(1 << 20)})


@pytest.mark.parametrize("through_buffer", [False, True], ids=["own-memory", "host-buffer"])
@pytest.mark.parametrize("at", [0.01, 0.5, 0.99], ids=["early", "middle", "late"])
def test_the_read_side_digest_catches_damage_anywhere_in_a_large_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, through_buffer: bool, at: float
) -> None:
    # Many pieces hashed one behind the reads; through a small reused buffer, a hash
    # that lagged would see the next block's bytes and miss (or invent) the damage.
    if through_buffer:
        monkeypatch.setattr(torch_plan, "_DIRECT_DEVICES", frozenset())
        monkeypatch.setattr(torch_read, "_MAX_STAGING", 1 << 20)
    monkeypatch.setattr(torch_read, "_PIECE", 256 << 10)
    gen = torch.Generator().manual_seed(5)
    state = {"a": torch.rand(3 << 20, generator=gen), "b": torch.rand(1000, 700, generator=gen)}
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert torch.equal(loaded["a"], state["a"])
    assert torch.equal(loaded["b"], state["b"])
    path = tmp_path / STATE_FILE
    data = bytearray(path.read_bytes())
    data[4096 + int((len(data) - 4096 - 16) * at)] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.ChecksumMismatchError):
        load_state(tmp_path)
