"""Writes dtypes.pth: a torch.save-style zip with a bf16 tensor stored as a transposed (strided)
view, an f16 tensor and a state dict carrying `_metadata` (BUILD), without needing torch.

Expected values (checked by tests/tests/dtypes.rs):
  w (bf16): storage [1, 2, 3, 4, 5, 6] viewed with shape (2, 3), stride (1, 2)
            -> [[1, 3, 5], [2, 4, 6]]
  h (f16):  [0.5, -1.25, 2.0, 65504.0]
"""
import collections, io, pickle, struct, sys, types, zipfile

torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
sys.modules["torch"], sys.modules["torch._utils"] = torch, utils


def _rebuild_tensor_v2(*args):
    raise RuntimeError("never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2


class BFloat16Storage: pass
class HalfStorage: pass


for cls in (BFloat16Storage, HalfStorage):
    cls.__module__ = "torch"
    setattr(torch, cls.__name__, cls)


class Storage:
    def __init__(self, cls, key, numel):
        self.cls, self.key, self.numel = cls, key, numel


class Tensor:
    def __init__(self, storage, shape, stride):
        self.storage, self.shape, self.stride = storage, shape, stride

    def __reduce__(self):
        return (_rebuild_tensor_v2, (self.storage, 0, self.shape, self.stride, False, collections.OrderedDict()))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def bf16(x):
    return struct.pack("<f", x)[2:]


state = collections.OrderedDict()
state["w"] = Tensor(Storage(BFloat16Storage, "0", 6), (2, 3), (1, 2))
state["h"] = Tensor(Storage(HalfStorage, "1", 4), (4,), (1,))
state._metadata = collections.OrderedDict([("", {"version": 1})])
buf = io.BytesIO()
Pickler(buf, protocol=2).dump({"state_dict": state, "meta": {"note": "dtypes"}})
with zipfile.ZipFile("dtypes.pth", "w", zipfile.ZIP_STORED) as z:
    z.writestr("dtypes/data.pkl", buf.getvalue())
    z.writestr("dtypes/data/0", b"".join(bf16(v) for v in [1, 2, 3, 4, 5, 6]))
    z.writestr("dtypes/data/1", struct.pack("<4e", 0.5, -1.25, 2.0, 65504.0))
    z.writestr("dtypes/version", "3\n")
