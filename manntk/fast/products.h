// The chunk kernels' matrix products: torch's BLAS (at::mm), or oneDNN's inner product for
// large float32 products where manntk/fast/products.py chose it.
//
// Why: torch's x86 wheels use MKL for BLAS, and MKL runs its AVX-512 single-precision
// kernels on Intel's CPUs only. On a 2-core AMD EPYC (Zen 5, AVX-512) MKL's sgemm ran at
// ~100 GFLOP/s on one thread ([128, 1128] x [1128, 2500]) and oneDNN's, which picks its
// kernels by instruction set, at ~215: torch.nn.LSTM trains through oneDNN, so the kernels
// lost to it by the factor of two. oneDNN costs ~10 us more per call, so small products
// (batch 1 on the algorithmic tasks) stay on the BLAS.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/mm.h>

#include <optional>

namespace manntk_products {

// Whether float32 products may go through oneDNN (set by set_onednn_products, once a process).
inline bool& onednn() {
  static bool use = false;
  return use;
}

// Multiply-adds from which oneDNN's fixed cost per call is repaid (measured on the AMD EPYC:
// level at [16, 240] x [240, 500], 1.9M; slower under 0.5M).
constexpr int64_t kOnednnFrom = int64_t(1) << 21;

// The fewest rows and columns of a product oneDNN takes: with a few rows and a long inner
// dimension ([5, 6400] x [6400, 628], a weight gradient of the addressing) it ran 300 times
// slower than MKL.
constexpr int64_t kOnednnSide = 16;

inline bool via_onednn(const at::Tensor& a, const at::Tensor& b) {
  const int64_t rows = a.size(0), inner = a.size(1), columns = b.size(1);
  return onednn() && a.scalar_type() == at::kFloat && rows >= kOnednnSide && columns >= kOnednnSide &&
         rows * inner * columns >= kOnednnFrom;
}

// a @ b by oneDNN, whose inner product computes x w^T: it is given b^T, a view (any strides).
inline at::Tensor onednn_mm(const at::Tensor& a, const at::Tensor& b) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               c10::string_view, c10::List<std::optional<at::Scalar>>,
                                               std::optional<c10::string_view>)>();
  return op.call(a, b.t(), std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
}

// a @ b, as at::mm. oneDNN copies a first operand whose rows are not contiguous (a weight
// gradient's a = g^T, [out, T*B]); where copying b^T and transposing the product back moves
// fewer numbers, it computes (b^T a^T)^T instead (dW_go of ARMIN 500: 193 ms against 230).
inline at::Tensor mm(const at::Tensor& a, const at::Tensor& b) {
  if (!via_onednn(a, b)) return at::mm(a, b);
  const int64_t rows = a.size(0), inner = a.size(1), columns = b.size(1);
  const int64_t copied = a.is_contiguous() ? 0 : rows * inner;
  const int64_t copied_swapped = (b.t().is_contiguous() ? 0 : columns * inner) + rows * columns;
  return copied_swapped < copied ? onednn_mm(b.t(), a.t()).t().contiguous() : onednn_mm(a, b);
}

// a @ b into out (a view or a buffer of a @ b's shape), as at::mm_out.
inline void mm_out(at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
  if (via_onednn(a, b)) {
    out.copy_(onednn_mm(a, b));
  } else {
    at::mm_out(out, a, b);
  }
}

}  // namespace manntk_products
