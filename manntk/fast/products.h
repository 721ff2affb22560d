// The chunk kernels' matrix products: torch's BLAS (at::mm), or oneDNN's matmul for large
// float32 products where manntk/fast/products.py chose it.
//
// Why: torch's x86 wheels use MKL for BLAS, and MKL runs its AVX-512 single-precision
// kernels on Intel's CPUs only. On a 2-core AMD EPYC (Zen 5, AVX-512) MKL's sgemm ran at
// ~100 GFLOP/s on one thread ([128, 1128] x [1128, 2500]) and oneDNN's, which picks its
// kernels by instruction set, at ~205-220: torch.nn.LSTM trains through oneDNN, so the
// kernels lost to it by the factor of two.
//
// The entry is torch's own at::native::mkldnn_matmul (what addmm calls for bfloat16): it
// writes into a given tensor and takes transposed operands as they are, so the weight
// gradients' g^T x need no transposed copy. It is not in torch's public headers, so it is
// looked up by its mangled name, which encodes its signature: where a torch lacks it (or
// changed it), or it refuses float32 on this CPU, every product stays on the BLAS.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <dlfcn.h>

#include <atomic>
#include <exception>

namespace manntk_products {

// at::native::mkldnn_matmul(mat1, mat2, result, beta, alpha): result = alpha mat1 mat2 + beta result
using Matmul = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float, float);

// Whether `matmul` multiplies float32 matrices here: torch 2.13 accepts float32 only on CPUs
// with AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT, and older versions only bfloat16 and float16;
// they raise otherwise. One small product, checked against its known answer.
inline bool multiplies_float32(Matmul matmul) {
  try {
    const auto options = at::TensorOptions().dtype(at::kFloat);
    auto a = at::empty({16, 16}, options), b = at::empty({16, 16}, options), out = at::empty({16, 16}, options);
    a.fill_(1.0);
    b.fill_(2.0);
    matmul(a, b, out, 0.0f, 1.0f);
    const float* value = out.data_ptr<float>();
    for (int64_t i = 0; i < 16 * 16; ++i) {
      if (value[i] != 32.0f) return false;
    }
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// torch's oneDNN matmul, or nullptr where this torch lacks it or it cannot take float32 here.
inline Matmul onednn_matmul() {
  static const Matmul found = [] {
    void* torch_cpu = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);  // loaded already: by torch
    void* symbol = torch_cpu ? dlsym(torch_cpu, "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff") : nullptr;
    const auto matmul = reinterpret_cast<Matmul>(symbol);
    return (matmul != nullptr && multiplies_float32(matmul)) ? matmul : nullptr;
  }();
  return found;
}

// Whether float32 products may go through oneDNN (set by set_onednn_products, once a process).
inline bool& onednn() {
  static bool use = false;
  return use;
}

// Products run by oneDNN so far (tests read it to see which library ran).
inline std::atomic<int64_t>& onednn_count() {
  static std::atomic<int64_t> count{0};
  return count;
}

// Multiply-adds from which oneDNN's fixed cost per call (~10 us) is repaid (measured on the
// AMD EPYC: level at [16, 240] x [240, 500], 1.9M; slower under 0.5M).
constexpr int64_t kOnednnFrom = int64_t(1) << 21;

// The fewest rows and columns of a product oneDNN takes (a few rows and a long inner
// dimension, [5, 6400] x [6400, 628], ran far slower than on MKL).
constexpr int64_t kOnednnSide = 16;

// oneDNN takes contiguous operands and their transposes as they are (it would copy others).
inline bool plain_or_transposed(const at::Tensor& t) {
  return t.is_contiguous() || t.t().is_contiguous();
}

inline bool via_onednn(const at::Tensor& a, const at::Tensor& b) {
  const int64_t rows = a.size(0), inner = a.size(1), columns = b.size(1);
  return onednn() && onednn_matmul() != nullptr && a.scalar_type() == at::kFloat && rows >= kOnednnSide &&
         columns >= kOnednnSide && rows * inner * columns >= kOnednnFrom && plain_or_transposed(a) &&
         plain_or_transposed(b);
}

// a @ b into out (contiguous, a @ b's shape), as at::mm_out.
inline void mm_out(at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
  if (via_onednn(a, b) && out.is_contiguous()) {
    onednn_matmul()(a, b, out, 0.0f, 1.0f);
    ++onednn_count();
  } else {
    at::mm_out(out, a, b);
  }
}

// a @ b, as at::mm.
inline at::Tensor mm(const at::Tensor& a, const at::Tensor& b) {
  if (!via_onednn(a, b)) return at::mm(a, b);
  auto out = at::empty({a.size(0), b.size(1)}, a.options());
  manntk_products::mm_out(out, a, b);
  return out;
}

}  // namespace manntk_products
