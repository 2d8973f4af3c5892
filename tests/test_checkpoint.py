"""Checkpoints: safe reading (no code runs), exact fitting, non-finite refusal, the hub cache."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cnnviz.errors import CheckpointError, NonFiniteError, WeightsUnavailableError
from cnnviz.models.checkpoint import (
    CheckpointNotFoundError,
    apply_checkpoint,
    fetch_hub_checkpoint,
    hub_checkpoint_path,
    load_checkpoint,
)

URL = "https://download.pytorch.org/models/tiny-0123abcd.pth"


class _Payload:
    """Unpickling this creates the file at ``marker`` (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))


def test_payload_really_runs_when_unpickled_unsafely(tmp_path: Path) -> None:
    # Control for the refusal tests below: the payload does create its file.
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save({"weight": torch.ones(2), "evil": _Payload(marker)}, path)
    else:  # plain pickle (protocol 2, which torch's restricted unpickler parses)
        with path.open("wb") as f:
            pickle.dump({"evil": _Payload(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"refused to unpickle.*GLOBAL io\.open") as info:
        load_checkpoint(path)
    assert not marker.exists()
    assert "weights_only` set to `False`" not in str(info.value)  # no advice to load unsafely


def test_safetensors_round_trip_is_exact(tmp_path: Path) -> None:
    model = _tiny()
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_checkpoint(path)
    assert set(loaded) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded[key], tensor)
    other = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    apply_checkpoint(other, loaded)
    x = torch.tensor([[0.5, -1.0], [2.0, 3.0]])
    assert torch.equal(other(x), model(x))


def test_wrapped_state_dict_and_dataparallel_prefix(tmp_path: Path) -> None:
    model = _tiny()
    path = tmp_path / "trainer.pt"
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 7, "state_dict": wrapped}, path)
    loaded = load_checkpoint(path)
    assert sorted(loaded) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert torch.equal(loaded["2.weight"], model[2].weight)


def test_nan_weight_is_refused_with_its_name(tmp_path: Path) -> None:
    state = _tiny().state_dict()
    state["2.weight"][0, 1] = float("nan")
    state["2.weight"][0, 2] = float("inf")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    with pytest.raises(NonFiniteError, match=r"'2\.weight' holds 2 NaN/infinite value\(s\) of 3"):
        load_checkpoint(path)


def test_inf_in_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inf.safetensors"
    save_file({"w": torch.tensor([1.0, -float("inf")])}, str(path))
    with pytest.raises(NonFiniteError, match="'w'"):
        load_checkpoint(path)


def test_mismatched_keys_are_listed_and_nothing_is_loaded() -> None:
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {
        "0.weight": torch.zeros(3, 2),
        "0.bias": torch.zeros(3),
        "2.weight": torch.zeros(2, 3),  # mis-shaped: the model has (1, 3)
        "extra.weight": torch.zeros(1),  # unexpected; "2.bias" is missing
    }
    with pytest.raises(CheckpointError) as info:
        apply_checkpoint(model, state, source="my.pth")
    message = str(info.value)
    assert "my.pth does not fit Sequential" in message
    assert "1 missing key(s) '2.bias'" in message
    assert "1 unexpected key(s) 'extra.weight'" in message
    assert "'2.weight: checkpoint (2, 3) vs model (1, 3)'" in message
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[key])


def test_long_key_lists_show_the_first_five_and_the_count() -> None:
    state = dict(_tiny().state_dict())
    state.update({f"extra{i}": torch.zeros(1) for i in range(7)})
    with pytest.raises(CheckpointError, match=r"7 unexpected key\(s\) 'extra0', .*'extra4', … \(7"):
        apply_checkpoint(_tiny(), state)


def test_key_map_renames_and_missing_bn_counter_is_tolerated() -> None:
    torch.manual_seed(1)
    source = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    source[1].running_mean.fill_(0.25)
    state = {f"features.{k}": v for k, v in source.state_dict().items()}
    del state["features.1.num_batches_tracked"]  # absent from old torchvision checkpoints
    key_map = {k: k.removeprefix("features.") for k in state}
    target = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    apply_checkpoint(target, state, key_map=key_map)
    assert torch.equal(target[0].weight, source[0].weight)
    assert torch.equal(target[1].running_mean, torch.full((2,), 0.25))


def test_assign_takes_tensors_into_a_meta_module_with_its_dtypes() -> None:
    torch.manual_seed(2)
    source = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    state = {k: v.half() for k, v in source.state_dict().items() if "num_batches" not in k}
    with torch.device("meta"):
        target = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    apply_checkpoint(target, state, assign=True)
    assert target[0].weight.dtype == torch.float32
    assert not target[0].weight.is_meta
    assert target[0].weight.requires_grad
    assert torch.equal(target[0].weight, source[0].weight.half().float())
    assert int(target[1].num_batches_tracked) == 0


def test_assign_refuses_to_leave_meta_tensors() -> None:
    class WithScratch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(1, 1)
            self.register_buffer("scratch", torch.zeros(2), persistent=False)

    with torch.device("meta"):
        target = WithScratch()
    state = {"fc.weight": torch.ones(1, 1), "fc.bias": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"leaves 1 tensor\(s\) .* \('scratch'\)"):
        apply_checkpoint(target, state, assign=True)


def test_large_finite_values_are_not_mistaken_for_overflow() -> None:
    from cnnviz.models.checkpoint import check_finite_weights

    overflowing = torch.full((100,), 60000.0, dtype=torch.float16)  # its sum overflows fp16
    check_finite_weights({"w": overflowing})
    with pytest.raises(NonFiniteError, match="'w' holds 1 NaN"):
        check_finite_weights({"w": torch.tensor([60000.0, float("nan")], dtype=torch.float16)})


def test_missing_file_unknown_suffix_damaged_file_and_non_tensors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="does not exist") as info:
        load_checkpoint(tmp_path / "absent.pth")
    assert isinstance(info.value, FileNotFoundError)
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"suffix '\.ckpt'.*\.safetensors"):
        load_checkpoint(tmp_path / "w.ckpt")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"refused to unpickle .*bad\.pth.*Unsupported"):
        load_checkpoint(tmp_path / "bad.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "w.ckpt").read_bytes() * 0)
    with pytest.raises(CheckpointError, match=r"cut\.pth"):
        load_checkpoint(tmp_path / "cut.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_checkpoint(tmp_path / "bad.safetensors")
    torch.save({"w": torch.ones(1), "note": "hello"}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="non-tensor entries 'note'"):
        load_checkpoint(tmp_path / "mixed.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt")


def test_hub_path_follows_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert hub_checkpoint_path(URL) == tmp_path / "hub" / "checkpoints" / "tiny-0123abcd.pth"


def test_offline_without_cache_raises_and_never_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls: list[str] = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, *a, **k: calls.append(url))
    with pytest.raises(WeightsUnavailableError) as info:
        fetch_hub_checkpoint(URL, model_name="tiny")
    message = str(info.value)
    assert "CNNVIZ_OFFLINE" in message
    assert str(hub_checkpoint_path(URL)) in message
    assert 'weights="FILE" or weights="random"' in message
    assert "\n" not in message
    assert calls == []


def test_failed_download_becomes_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("CNNVIZ_OFFLINE")
    # The host answers the probe (no real connection is made): the download itself fails.
    monkeypatch.setattr("cnnviz.models.checkpoint.network_reachable", lambda *a, **k: True)
    calls: list[tuple[str, str, object]] = []

    def refuse(url: str, dst: str, hash_prefix: object = None, **_: object) -> None:
        calls.append((url, dst, hash_prefix))
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    with pytest.raises(WeightsUnavailableError, match=r"could not be downloaded.*unreachable"):
        fetch_hub_checkpoint(URL, model_name="tiny")
    # One attempt, to the cache path, with the hash prefix from the file name checked.
    assert calls == [(URL, str(hub_checkpoint_path(URL)), "0123abcd")]


def test_cached_file_is_used_without_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = hub_checkpoint_path(URL)
    cached.parent.mkdir(parents=True)
    torch.save({"w": torch.tensor([3.0])}, cached)
    assert fetch_hub_checkpoint(URL, model_name="tiny") == cached
    assert torch.equal(load_checkpoint(cached)["w"], torch.tensor([3.0]))
