"""ONNX element types and tensors <-> IR dtypes and torch containers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from ..ir import dtypes as dt
from ..ir.errors import FrontendError

ONNX_TO_DTYPE: dict[int, dt.DType] = {
    TensorProto.FLOAT: dt.f32, TensorProto.DOUBLE: dt.f64, TensorProto.FLOAT16: dt.f16,
    TensorProto.BFLOAT16: dt.bf16, TensorProto.INT64: dt.i64, TensorProto.INT32: dt.i32,
    TensorProto.INT16: dt.i16, TensorProto.INT8: dt.i8, TensorProto.UINT8: dt.u8,
    TensorProto.BOOL: dt.boolean, TensorProto.INT4: dt.i4, TensorProto.UINT4: dt.u4,
    TensorProto.FLOAT8E4M3FN: dt.f8e4m3, TensorProto.FLOAT8E5M2: dt.f8e5m2,
    TensorProto.FLOAT4E2M1: dt.f4e2m1,
}
DTYPE_TO_ONNX: dict[str, int] = {d.name: k for k, d in ONNX_TO_DTYPE.items()}


def onnx_dtype(elem_type: int, where: str) -> dt.DType:
    """The IR dtype of an ONNX element type; FrontendError naming ``where`` if there is none."""
    try:
        return ONNX_TO_DTYPE[elem_type]
    except KeyError:
        name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() \
            else str(elem_type)
        raise FrontendError(f"{where}: element type {name} is not supported") from None


def numpy_to_torch(a: np.ndarray, d: dt.DType) -> torch.Tensor:
    """A numpy array (ml_dtypes for bf16/f8/f4/int4) as ``d``'s torch container."""
    a = np.asarray(a, order="C")  # not ascontiguousarray, which turns 0-d arrays into 1-d
    if d is dt.bf16:
        return torch.from_numpy(a.view(np.uint16).astype(np.int16)).view(torch.bfloat16).clone()
    if d in (dt.f8e4m3, dt.f8e5m2):
        return torch.from_numpy(a.view(np.uint8).copy()).view(d.container)
    if d is dt.f4e2m1:
        return torch.from_numpy(a.view(np.uint8).copy()) & 0xF
    if d in (dt.i4, dt.u4):
        return torch.from_numpy(a.astype(np.int8 if d is dt.i4 else np.uint8))
    if d is dt.boolean:
        return torch.from_numpy(a.astype(np.bool_))
    return torch.from_numpy(a.copy()).to(d.container)


def tensor_to_torch(t: onnx.TensorProto, base_dir: Path | None, where: str) -> tuple[torch.Tensor, dt.DType]:
    """An ONNX TensorProto (external data already resolved into raw_data) as a torch container."""
    d = onnx_dtype(t.data_type, where)
    try:
        a = numpy_helper.to_array(t, base_dir=str(base_dir) if base_dir else "")
    except Exception as e:  # onnx raises several types for malformed tensors
        raise FrontendError(f"{where}: cannot read tensor data: {e}") from None
    return numpy_to_torch(a, d), d


def resolve_external_data(model: onnx.ModelProto, base_dir: Path | None) -> None:
    """Read every external-data initializer into ``raw_data``.

    A location that resolves outside ``base_dir`` (``..``, absolute paths, symlinks out) is
    rejected, so a model file cannot make scalefold read arbitrary files.
    """
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    for t in _get_all_tensors(model):
        if not uses_external_data(t):
            continue
        info = ExternalDataInfo(t)
        if base_dir is None:
            raise FrontendError(f"initializer '{t.name}': external data '{info.location}' needs the "
                                f"model to be loaded from a path")
        root = base_dir.resolve()
        target = (root / info.location).resolve()
        if Path(info.location).is_absolute() or not target.is_relative_to(root):
            raise FrontendError(f"initializer '{t.name}': external data path '{info.location}' "
                                f"escapes the model's folder {root}")
        if not target.is_file():
            raise FrontendError(f"initializer '{t.name}': external data file {target} not found")
        with open(target, "rb") as f:
            if info.offset:
                f.seek(info.offset)
            data = f.read(info.length) if info.length else f.read()
        if info.length and len(data) != info.length:
            raise FrontendError(f"initializer '{t.name}': external data file {target} is truncated")
        t.raw_data = data
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT
