"""`ckpt.torch.save_state` / `load_state`: round trips, safety, durability, errors."""

from __future__ import annotations

import json
import math
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash

import ckpt

torch = pytest.importorskip("torch")
import ckpt.torch._io as torch_io  # noqa: E402 - after the skip
import ckpt.torch._plan as torch_plan  # noqa: E402
import ckpt.torch._read as torch_read  # noqa: E402
from ckpt.torch import (  # noqa: E402
    STATE_FILE,
    DeviceUnavailableError,
    StateNotFoundError,
    load_state,
    save_state,
)

pytestmark = pytest.mark.torch

Make = Callable[..., ckpt.CheckpointManager]


def as_bytes(tensor: Any) -> bytes:
    dense = torch.empty(tensor.shape, dtype=tensor.dtype).copy_(tensor.detach())
    return bytes(dense.reshape(-1).view(torch.uint8).numpy())


def assert_same(saved: Any, loaded: Any, where: str = "") -> None:
    """``loaded`` is what ``saved`` should come back as: same types, shapes and bytes."""
    if isinstance(saved, torch.Tensor):
        assert type(loaded) is torch.Tensor, where
        assert loaded.dtype == saved.dtype, where
        assert loaded.shape == saved.shape, where
        assert loaded.device == saved.device, where
        assert not loaded.requires_grad, where
        assert as_bytes(loaded) == as_bytes(saved), where
    elif isinstance(saved, dict):
        assert type(loaded) is dict, where
        assert list(loaded) == list(saved), where  # keys, their types and their order
        for key in saved:
            assert_same(saved[key], loaded[key], f"{where}/{key}")
    elif isinstance(saved, (list, tuple)):
        assert type(loaded) is type(saved), where
        assert len(loaded) == len(saved), where
        for i, (a, b) in enumerate(zip(saved, loaded, strict=True)):
            assert_same(a, b, f"{where}/{i}")
    elif isinstance(saved, float) and math.isnan(saved):
        assert type(loaded) is float, where
        assert math.isnan(loaded), where
    else:
        assert type(loaded) is type(saved), where
        assert loaded == saved, where


_DTYPE_NAMES = """bool uint8 int8 int16 int32 int64 uint16 uint32 uint64 float16 bfloat16
float32 float64 complex64 complex128 float8_e4m3fn float8_e5m2 float8_e8m0fnu"""
DTYPES = [name for name in _DTYPE_NAMES.split() if hasattr(torch, name)]


def tensor_of(dtype_name: str, shape: tuple[int, ...], seed: int = 0) -> Any:
    """A tensor of any dtype holding varied bit patterns."""
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(seed)
    size = math.prod(shape) * dtype.itemsize
    raw = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


def nested_state() -> dict[Any, Any]:
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    return {
        "model": {f"{name}.weight": tensor_of(name, (3, 5), i) for i, name in enumerate(DTYPES)},
        "zero_dim": torch.tensor(2.5, dtype=torch.bfloat16),
        "zero_dim_int": torch.tensor(7),
        "empty": torch.empty(0, 3),
        "empty_bf16": torch.empty(4, 0, dtype=torch.bfloat16),
        "views": {
            "transposed": base.t(),
            "strided": base[1::2, ::3],
            "expanded": torch.arange(3.0).expand(4, 3),
            "offset": base[2],
            "one_element": torch.arange(4.0)[1::2][:1],  # contiguous, with stride 2
            "conj": torch.tensor([1 + 2j, 3 - 4j]).conj(),
            "neg": torch.tensor([1 + 2j]).conj().imag,
        },
        "parameter": torch.nn.Parameter(torch.ones(2, 2)),
        "grad": torch.ones(3, requires_grad=True) * 2,
        "optimizer": {
            "state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.randn(4)}, 1: {}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1]}],
        },
        "scalars": [1, -(2**70), 0.1, float("inf"), -float("inf"), float("nan"), True, None],
        "strings": ["", "naïve ✓", "line\nbreak", '{"tensor": 0}', "\ud800"],
        "keys": {1: "int", 1.5: "float", "1": "str", None: "none", False: "bool"},
        "tuple": (1, (2, [3, {"x": ()}])),
        "ordered": OrderedDict([("b", 1), ("a", 2)]),
        "": [[]],
    }


def expected(state: Any) -> Any:
    """What ``state`` loads as: plain dicts, plain tensors, views made dense."""
    if isinstance(state, torch.Tensor):
        return state.detach().resolve_conj().resolve_neg().contiguous()
    if isinstance(state, dict):
        return {key: expected(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(expected(value) for value in state)
    return state


def test_a_nested_state_round_trips(tmp_path: Path) -> None:
    state = nested_state()
    path = save_state(tmp_path, state)
    assert path == tmp_path / STATE_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]
    loaded = load_state(tmp_path)
    assert_same(expected(state), loaded)
    assert all(t.is_contiguous() for t in loaded["views"].values())
    loaded["model"]["float32.weight"].add_(1)  # loaded tensors are ordinary, writable ones
    assert_same(expected(state), load_state(str(tmp_path)))  # a str path works too


def test_a_model_and_its_optimizer_resume(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    save_state(tmp_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict()})

    loaded = load_state(tmp_path)
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    fresh.load_state_dict(loaded["model"])
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    fresh_optimizer.load_state_dict(loaded["optimizer"])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert fresh_optimizer.param_groups[0]["lr"] == 0.01
    assert_same(expected(optimizer.state_dict()), fresh_optimizer.state_dict())


def test_tied_tensors_stay_tied_and_views_are_saved_alone(tmp_path: Path) -> None:
    embedding = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight
    state = {**embedding.state_dict(prefix="embed."), **head.state_dict(prefix="head.")}
    assert state["embed.weight"] is not state["head.weight"]  # two views of one storage
    big = torch.zeros(1_000_000)
    state["window"] = big[10:20]
    state["same_object"] = [state["window"], state["window"]]
    path = save_state(tmp_path, state)

    loaded = load_state(tmp_path)
    assert loaded["embed.weight"] is loaded["head.weight"]
    assert loaded["same_object"][0] is loaded["same_object"][1]
    assert loaded["window"] is loaded["same_object"][0]
    assert loaded["window"].shape == (10,)
    assert path.stat().st_size < 8192  # the window alone, not its million-element storage


def test_the_file_is_documented_json_and_raw_bytes(tmp_path: Path) -> None:
    path = save_state(tmp_path, {"w": torch.arange(4, dtype=torch.int32), "n": 3})
    data = path.read_bytes()
    assert data[:8] == b"\x89CKPTST\n"
    length = int.from_bytes(data[8:16], "little")
    header = json.loads(data[16 : 16 + length])
    assert header["tensors"] == [{"dtype": "int32", "shape": [4], "offset": 0, "device": "cpu"}]
    assert header["state"] == {"dict": [["w", {"tensor": 0}], ["n", 3]]}
    assert header["format"] == 2
    assert len(data) == 4096 + 16 + 16
    assert data[4096:4112] == torch.arange(4, dtype=torch.int32).numpy().tobytes()
    assert data[4112:] == xxhash.xxh3_128_digest(data[:4112])  # the trailer


def _flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def test_large_and_strided_tensors_are_hashed_on_the_helper_thread_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small host buffer, reused block after block: a hash that lagged behind the writes
    # would read a block that the next copy had overwritten, and the trailer would lie.
    monkeypatch.setattr(torch_io, "_MAX_STAGING", 1 << 20)
    monkeypatch.setattr(torch_io, "_OVERLAP_MIN", 64 << 10)
    real = torch_read._digest.hasher

    class _Slow:  # a helper thread that lags, so that the test cannot pass by its speed
        def __init__(self) -> None:
            self._inner = real()

        def update(self, data: Any) -> None:
            if len(data) >= 64 << 10:
                time.sleep(0.002)
            self._inner.update(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    monkeypatch.setattr(torch_read._digest, "hasher", _Slow)
    gen = torch.Generator().manual_seed(1)
    state = {
        "big": torch.rand(3 << 20, generator=gen),  # 12 MiB, written from its own memory
        "strided": torch.rand(2048, 1024, generator=gen).t(),  # 8 MiB through the buffer
        "small": torch.arange(10),
    }
    path = save_state(tmp_path, state)
    data = path.read_bytes()
    assert data[-16:] == xxhash.xxh3_128_digest(data[:-16])
    assert_same(state, load_state(tmp_path))


def test_every_flipped_byte_of_a_state_file_is_refused_and_nothing_loads(tmp_path: Path) -> None:
    state = {"a": torch.arange(3.0), "b": torch.ones(2, 2, dtype=torch.float64), "n": 7}
    path = save_state(tmp_path, state)
    data = path.read_bytes()
    length = int.from_bytes(data[8:16], "little")
    # every byte of the data and trailer, the padding's ends, a sample of the header
    places = [*range(16, 16 + length, 7), 16 + length, 4095, *range(4096, len(data))]
    for at in places:
        path.write_bytes(_flipped(data, at))
        with pytest.raises(ckpt.SerializationError) as caught:
            load_state(tmp_path)
        if at >= 16 + length:  # past the header: only the digest can tell
            assert isinstance(caught.value, ckpt.ChecksumMismatchError), at
            assert caught.value.path == str(path)
            assert "damaged" in str(caught.value)
    path.write_bytes(data)
    assert_same(state, load_state(tmp_path))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # botocore's utcnow
def test_a_damaged_state_file_on_an_object_store_is_refused(s3_server: Any) -> None:
    from upath import UPath

    directory = UPath(f"s3://{s3_server.new_bucket()}/run", **s3_server.options())
    (directory / "note.txt").write_text("a prefix is there once it holds an object")
    state = {"w": torch.arange(1000.0)}
    save_state(directory, state)
    assert_same(state, load_state(directory))
    data = (directory / STATE_FILE).read_bytes()
    (directory / STATE_FILE).write_bytes(_flipped(data, len(data) - 100))
    with pytest.raises(ckpt.ChecksumMismatchError, match="damaged"):
        load_state(directory)


def test_a_format_1_file_without_a_trailer_still_loads(tmp_path: Path) -> None:
    state = {"a": torch.arange(5.0), "b": [torch.ones(3, dtype=torch.int16)]}
    path = save_state(tmp_path, state)
    _rewrite_header(path, _set("format", value=1))  # what ckpt wrote before it hashed files
    assert_same(state, load_state(tmp_path))


def test_map_location(tmp_path: Path) -> None:
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": [torch.tensor(1)], "c": torch.empty(0)}
    save_state(tmp_path, state)
    for where in ("cpu", torch.device("cpu"), {"cpu": "cpu"}, {"cuda:0": "cpu"}, None):
        assert_same(state, load_state(tmp_path, map_location=where))
    on_meta = load_state(tmp_path, map_location={"cpu": "meta"})
    assert on_meta["a"].device.type == "meta"
    assert on_meta["a"].shape == (2, 3)
    assert on_meta["b"][0].dtype == torch.int64
    with pytest.raises(TypeError, match="map_location"):
        load_state(tmp_path, map_location=42)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_device_that_is_not_there_is_a_clear_error(tmp_path: Path) -> None:
    save_state(tmp_path, {"a": torch.ones(2)})
    with pytest.raises(DeviceUnavailableError, match="map_location='cpu'") as info:
        load_state(tmp_path, map_location="cuda:0")
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, ckpt.CheckpointError)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_tensors_round_trip(tmp_path: Path) -> None:  # pragma: no cover - no GPU in CI
    state = {"w": torch.randn(300, 70, device="cuda"), "t": torch.randn(5, 6, device="cuda").t()}
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert loaded["w"].device == state["w"].device
    assert torch.equal(loaded["w"], state["w"])
    assert torch.equal(loaded["t"], state["t"])
    on_cpu = load_state(tmp_path, map_location="cpu")
    assert torch.equal(on_cpu["w"], state["w"].cpu())


@pytest.fixture
def through_host_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make CPU tensors take the path of GPU tensors: small blocks through a host buffer."""
    monkeypatch.setattr(torch_plan, "_DIRECT_DEVICES", frozenset())
    monkeypatch.setattr(torch_io, "_MAX_STAGING", 256)
    monkeypatch.setattr(torch_io, "_MIN_STAGING", 64)
    monkeypatch.setattr(torch_read, "_MAX_STAGING", 256)
    monkeypatch.setattr(torch_read, "_MIN_STAGING", 64)


@pytest.mark.usefixtures("through_host_buffer")
def test_tensors_off_the_cpu_go_through_a_bounded_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allocated: list[int] = []
    empty = torch.empty

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = empty(*args, **kwargs)
        if kwargs.get("dtype") == torch.uint8:
            allocated.append(out.numel())
        return out

    monkeypatch.setattr(torch, "empty", spy)
    state = {
        "rows": torch.randn(100, 7),  # 28-byte rows: 9 rows a block
        "wide": torch.randn(2, 100),  # a row larger than the buffer: one row a block
        "t": torch.randn(30, 20).t(),
        "zero_dim": torch.tensor(3, dtype=torch.int16),
        "empty": torch.empty(3, 0),
        "bf16": tensor_of("bfloat16", (33,)),
    }
    save_state(tmp_path, state)
    assert max(allocated, default=0) == 400  # a wide row; never a 2,800-byte tensor at once
    allocated.clear()
    assert_same(expected(state), load_state(tmp_path))
    assert max(allocated, default=0) == 256


# --- refusing what cannot be loaded safely ------------------------------------------------


class Unpicklable:
    pass


class MyTensor(torch.Tensor):
    pass


BAD_STATES: list[Any] = [
    pytest.param(lambda: {"model": {"w": object()}}, "object at model/w", id="object"),
    pytest.param(lambda: {"w": np.ones(3)}, "ndarray at w", id="numpy"),
    pytest.param(lambda: {"f": lambda: 0}, "function at f", id="function"),
    pytest.param(lambda: [{1, 2}], "set at 0", id="set"),
    pytest.param(lambda: {"b": b"bytes"}, "bytes at b", id="bytes"),
    pytest.param(lambda: {"x": [1, Unpicklable()]}, "Unpicklable at x/1", id="custom"),
    pytest.param(lambda: {(1, 2): torch.ones(1)}, "key of type tuple", id="tuple-key"),
    pytest.param(lambda: {"s": torch.eye(3).to_sparse()}, "dense", id="sparse"),
    pytest.param(lambda: {"m": torch.empty(3, device="meta")}, "meta", id="meta"),
    pytest.param(lambda: {"q": torch.zeros(2, dtype=torch.complex32)}, "dtype", id="complex32"),
    pytest.param(
        lambda: {"sub": torch.ones(2).as_subclass(MyTensor)}, "MyTensor at sub", id="subclass"
    ),
    pytest.param(object, "the top of the state", id="top"),
]


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize(("make", "message"), BAD_STATES)
def test_unsafe_values_are_refused_before_writing(
    tmp_path: Path, make: Callable[[], Any], message: str
) -> None:
    with pytest.raises(ckpt.SerializationError, match=message) as info:
        save_state(tmp_path, make())
    assert isinstance(info.value, ValueError)
    assert list(tmp_path.iterdir()) == []


def test_a_circular_state_is_refused(tmp_path: Path) -> None:
    loop: list[Any] = [torch.ones(1)]
    loop.append({"again": loop})
    with pytest.raises(ckpt.SerializationError, match="circular"):
        save_state(tmp_path, {"loop": loop})
    assert list(tmp_path.iterdir()) == []
    shared = [1, 2]
    assert load_state(save_state(tmp_path, [shared, shared]).parent) == [[1, 2], [1, 2]]


class Exploit:
    """Unpickling this runs code: it creates the directory ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_never_runs_when_loaded(tmp_path: Path) -> None:
    directory = tmp_path / "step_1"
    directory.mkdir()
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Exploit(probe)))
    assert probe.is_dir()  # the payload does run when unpickled

    marker = tmp_path / "pwned"
    (directory / STATE_FILE).write_bytes(pickle.dumps({"w": Exploit(marker)}))
    with pytest.raises(ckpt.SerializationError, match="not a state file"):
        load_state(directory)
    with open(directory / STATE_FILE, "wb") as f:  # a torch.save file holds a pickle too
        torch.save({"w": torch.ones(2), "x": Exploit(marker)}, f)
    with pytest.raises(ckpt.SerializationError, match="not a state file"):
        load_state(directory)
    assert not marker.exists()


def _rewrite_header(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = path.read_bytes()
    length = int.from_bytes(data[8:16], "little")
    header = json.loads(data[16 : 16 + length])
    change(header)
    body = json.dumps(header).encode()
    assert len(body) < 4096 - 16
    head = data[:8] + len(body).to_bytes(8, "little") + body
    # A new trailer for the new bytes: these tests are of the header's checks alone.
    rewritten = head + bytes(4096 - len(head)) + data[4096:-16]
    trailer = xxhash.xxh3_128_digest(rewritten) if header.get("format") == 2 else b""
    path.write_bytes(rewritten + trailer)


def _set(*keys: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(header: dict[str, Any]) -> None:
        node: Any = header
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return change


TAMPERED = [
    pytest.param(_set("format", value=3), "format", id="format"),
    pytest.param(_set("byteorder", value="big"), "big", id="byteorder"),
    pytest.param(_set("tensors", 0, "dtype", value="object"), "dtype", id="dtype"),
    pytest.param(_set("tensors", 0, "dtype", value="qint8"), "dtype", id="quantized"),
    pytest.param(_set("tensors", 0, "shape", value=[10**12]), "ends after", id="huge"),
    pytest.param(_set("tensors", 0, "shape", value=[-1]), "dimension", id="negative"),
    pytest.param(_set("tensors", 0, "shape", value=[True]), "dimension", id="bool-dim"),
    pytest.param(_set("tensors", 1, "offset", value=0), "offset", id="overlap"),
    pytest.param(_set("tensors", 0, "offset", value=1), "offset", id="unaligned"),
    pytest.param(_set("tensors", 0, "device", value="nowhere"), "device", id="device"),
    pytest.param(_set("tensors", 0, "pickle", value="x"), "described", id="extra-key"),
    pytest.param(_set("state", value={"pickle": "cos\nsystem\n"}), "unexpected", id="tag"),
    pytest.param(_set("state", value={"tensor": 5}), "unexpected", id="index"),
    pytest.param(_set("state", value={"dict": [[[1], 2]]}), "key", id="list-key"),
    pytest.param(_set("state", value={"dict": [[1]]}), "pair", id="pair"),
    pytest.param(_set("data_size", value=10**9), "bytes long", id="data-size"),
    pytest.param(lambda header: header.pop("state"), "no state", id="no-state"),
]


@pytest.mark.parametrize(("change", "message"), TAMPERED)
def test_a_tampered_header_is_refused(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    path = save_state(tmp_path, {"a": torch.ones(4), "b": torch.ones(4)})
    _rewrite_header(path, change)
    with pytest.raises(ckpt.SerializationError, match=message):
        load_state(tmp_path)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x89CKPTST\n", b"\x89CKPTST\n" + (10**6).to_bytes(8, "little"), b"PK\x03\x04"],
    ids=["empty", "magic-only", "long-header", "zip"],
)
def test_a_foreign_or_cut_file_is_refused(tmp_path: Path, data: bytes) -> None:
    (tmp_path / STATE_FILE).write_bytes(data)
    with pytest.raises(ckpt.SerializationError, match="not a state file"):
        load_state(tmp_path)


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    path = save_state(tmp_path, {"a": torch.ones(1000)})
    os.truncate(path, path.stat().st_size - 1)
    with pytest.raises(ckpt.SerializationError, match="truncated"):
        load_state(tmp_path)


# --- durability and failures -------------------------------------------------------------


def _failing_after(blocks: int, error: BaseException) -> Callable[..., Iterator[memoryview]]:
    real = torch_io._byte_blocks
    count = 0

    def fail(tensor: Any, staging: Any) -> Iterator[memoryview]:
        nonlocal count
        for block in real(tensor, staging):
            count += 1
            if count > blocks:
                raise error
            yield block

    return fail


@pytest.mark.parametrize(
    "error", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=repr
)
def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    save_state(tmp_path, {"version": 1})
    before = (tmp_path / STATE_FILE).read_bytes()
    monkeypatch.setattr(torch_io, "_byte_blocks", _failing_after(2, error))
    with pytest.raises(type(error)):
        save_state(tmp_path, {"w": [torch.ones(100) for _ in range(5)]})
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]
    assert (tmp_path / STATE_FILE).read_bytes() == before
    assert load_state(tmp_path) == {"version": 1}


def test_a_file_size_limit_mid_write_leaves_nothing(tmp_path: Path) -> None:
    """A real failed write (EFBIG from RLIMIT_FSIZE) part-way through a 4 MiB file."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(OSError, match="too large"):
            save_state(tmp_path, {"w": torch.ones(1 << 20)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert list(tmp_path.iterdir()) == []


def test_fsync_is_called_on_the_file_and_the_directory(tmp_path: Path, fsynced: list[str]) -> None:
    save_state(tmp_path, {"w": torch.ones(10)})
    assert len(fsynced) == 2
    assert Path(fsynced[0]).name.endswith(".partial")  # the file, before its rename
    assert fsynced[1] == str(tmp_path)
    fsynced.clear()
    save_state(tmp_path, {"w": torch.ones(10)}, fsync=False)
    assert fsynced == []


def test_inside_a_manager_checkpoint(make_manager: Make, ckpt_dir: Path) -> None:
    manager = make_manager(fsync=True, metric_name="loss", higher_is_better=False)
    state = {"model": {"w": torch.randn(8, 8)}, "step": 3}
    with manager.checkpoint(3, {"loss": 0.5}) as path:
        save_state(path, state)
        assert sorted(p.name for p in path.iterdir()) == [STATE_FILE, "training_info.json"]

    def failing_save() -> None:
        with manager.checkpoint(4, {"loss": 0.1}) as path:
            save_state(path, {"model": {"w": torch.zeros(1)}})
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing_save()
    assert manager.get_latest_checkpoint_path() == str(ckpt_dir / "step_3")
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_3")
    assert_same(state, load_state(manager.get_latest_checkpoint_path()))

    reader = make_manager(read_only=True)
    assert_same(state, load_state(reader.get_latest_checkpoint_path()))


# --- errors about paths --------------------------------------------------------------------


def test_saving_into_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="init_tmp_checkpoint") as info:
        save_state(tmp_path / "tmp_step_1", {"w": torch.ones(1)})
    assert info.value.filename == str(tmp_path / "tmp_step_1")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        save_state(tmp_path / "file", {"w": torch.ones(1)})


def test_loading_where_there_is_no_state_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StateNotFoundError, match=f"has no {STATE_FILE}") as info:
        load_state(tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, ckpt.CheckpointError)
    assert info.value.filename == str(tmp_path / STATE_FILE)
    with pytest.raises(StateNotFoundError, match="no directory"):
        load_state(tmp_path / "step_9")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StateNotFoundError, match="not a directory"):
        load_state(tmp_path / "file")


@pytest.mark.subprocess
def test_importing_ckpt_does_not_import_torch() -> None:
    script = "import sys, ckpt; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"


# --- DCP checkpoints under damage and crafted metadata (issue 36 #8, #15) ----------------------


def _dcp_checkpoint(directory: Path) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    state = {"w": torch.arange(4096, dtype=torch.float32), "b": torch.ones(7)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled": one process
        dcp.save(state, checkpoint_id=str(directory), no_dist=True)
    return state


def test_a_cut_dcp_shard_is_a_ckpt_error_not_a_base_exception(tmp_path: Path) -> None:
    directory = tmp_path / "step_1"
    _dcp_checkpoint(directory)
    shard = next(directory.glob("*.distcp"))
    with shard.open("r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    into = {"w": torch.zeros(4096), "b": torch.zeros(7)}
    # pytest.raises(Exception) is what a loop's `except Exception` sees: torch's own
    # CheckpointException (a BaseException) would escape it.
    with pytest.raises(Exception) as caught:  # noqa: PT011
        load_state(directory, into=into)
    assert isinstance(caught.value, ckpt.SerializationError)
    assert f"the DCP checkpoint {directory} could not be loaded" in str(caught.value)


def test_dcp_metadata_naming_a_shard_outside_its_directory_is_refused(tmp_path: Path) -> None:

    other = tmp_path / "other"
    _dcp_checkpoint(other)
    directory = tmp_path / "step_1"
    _dcp_checkpoint(directory)
    metadata = directory / ".metadata"
    with metadata.open("rb") as f:
        loaded = pickle.load(f)  # our own file, just written
    for info in loaded.storage_data.values():
        info.relative_path = "../other/" + info.relative_path
    metadata.write_bytes(pickle.dumps(loaded))
    with pytest.raises(ckpt.SerializationError, match=r"names '\.\./other/__0_0\.distcp'"):
        load_state(directory, into={"w": torch.zeros(4096), "b": torch.zeros(7)})
