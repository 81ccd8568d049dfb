"""The ONNX op table, one module per family; importing this package registers every converter."""
from . import basic  # noqa: F401
from . import quant  # noqa: F401
from . import elementwise  # noqa: F401
from . import reduce  # noqa: F401
from . import nn  # noqa: F401
from . import shape  # noqa: F401
from . import attention  # noqa: F401
from . import misc  # noqa: F401
from . import loss  # noqa: F401
from . import image  # noqa: F401
from . import scatter  # noqa: F401
from . import einsum  # noqa: F401
from . import rnn  # noqa: F401
from . import matmulnbits  # noqa: F401
from . import contrib_quant  # noqa: F401
from . import contrib, contrib_attention, contrib_gqa, contrib_norm  # noqa: F401
from . import contrib_gbq  # noqa: F401
from . import contrib_fused  # noqa: F401
from . import detection  # noqa: F401
