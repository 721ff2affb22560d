"""The fast paths, behind one seam: each is selected by capability and verified against
the plain path it replaces by named tests.

- [`recurrent`][manntk.fast.recurrent]: ``RecurrentWeight``, the per-step products of the
  recurrent columns (with MKL's packed weights from batch 32, where torch offers them;
  the public ``torch.nn.functional.linear`` otherwise): ``tests/test_recurrent.py``.
- [`tape`][manntk.fast.tape]: the memory written in place and undone in backward, for
  addressings that never read the memory's values (``manntk.backends.TapedMemory``):
  ``tests/test_tape.py``.
- [`armin_sequence`][manntk.fast.armin_sequence]: a whole chunk of an ARMIN layer as one
  C++ forward and backward, the default on the CPU (``model.fast: false`` turns it off):
  ``tests/test_armin_sequence.py``.
- [`tardis_sequence`][manntk.fast.tardis_sequence]: a whole chunk of a layer with TARDIS
  addressing (AwTA, TARDIS) as one C++ forward and backward, the default on the CPU:
  ``tests/test_tardis_sequence.py``.
- [`ntm_sequence`][manntk.fast.ntm_sequence]: a whole chunk of an NTM-style layer (LSTM
  controller, NTM read head, erase/add write with its own NTM head; either step order) as
  one C++ forward and backward, the default on the CPU: ``tests/test_ntm_sequence.py``.
- [`lstm_sequence`][manntk.fast.lstm_sequence]: a chunk of a memoryless LSTM layer (the
  paper's baseline) through torch's own LSTM, the default on the CPU:
  ``tests/test_lstm_sequence.py``.
- [`chunks`][manntk.fast.chunks]: which chunk kernel, if any, runs a layer's parts.
- [`products`][manntk.fast.products]: which library runs the chunk kernels' large float32
  matrix products, torch's BLAS (MKL) or oneDNN (on CPUs that are not Intel's):
  ``tests/test_products.py``. The kernels also keep their large buffers from chunk to
  chunk (``workspace.h``; ``armin_fused.release_workspace`` gives them back):
  ``tests/test_workspace.py``.
- [`armin_fused`][manntk.fast.armin_fused]: the ARMIN cell's elementwise work as C++
  kernels, one autograd node per step (``fused: true``): ``tests/test_armin_fused.py``.
- [`machine`][manntk.fast.machine]: what the fast paths read about the CPU.

Private torch operations (``torch.ops.mkl._mkl_linear``, and ``at::native::mkldnn_matmul``
from the C++ kernels) are called only here, guarded by a check that they exist, with the
public operation as the fallback.
"""
