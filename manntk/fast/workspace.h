// Large intermediate buffers of the chunk kernels, reused from one chunk to the next.
//
// Why: glibc serves allocations over its mmap threshold (which rises with what is freed, up
// to 32 MiB) from fresh mmaps, and gives the top of its heap back to the system once more
// than twice that is free there, as it is after every chunk's backward. So the large buffers
// of a chunk were new memory at every chunk, and the system faulted in and zeroed every page
// on first touch: ARMIN 500 (N=5) at batch 128 and 50 steps, ~40k page faults per training
// step, several percent of its time on the 2-core AMD EPYC.
//
// A buffer is handed out again only when nothing else holds its storage: not autograd (the
// forward's buffers are saved for backward until it has run), not a view, not a caller.
// Otherwise a new one is made (and kept, up to kKept per name: one per layer of a deep model).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/InferenceMode.h>

#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace manntk_workspace {

// Smaller buffers are left to the allocator (glibc keeps them in its heap).
constexpr int64_t kReuseFrom = int64_t(1) << 20;

constexpr size_t kKept = 8;

struct Kept {
  std::mutex lock;
  std::map<std::string, std::vector<at::Tensor>> buffers;  // by name
};

inline Kept& kept() {
  static Kept instance;
  return instance;
}

// Nothing but the list holds it.
inline bool is_free(const at::Tensor& buffer) {
  return buffer.use_count() == 1 && buffer.storage().use_count() == 1;
}

// Free, and of this chunk's kind: a buffer made under torch.inference_mode is an inference
// tensor, which autograd may not save and which may not be written outside that mode.
inline bool fits(const at::Tensor& buffer, int64_t numel, const at::TensorOptions& options) {
  return is_free(buffer) && buffer.numel() == numel && buffer.dtype() == options.dtype() &&
         buffer.device() == options.device() && buffer.is_inference() == c10::InferenceMode::is_enabled();
}

// An uninitialised tensor of `sizes`, reusing a buffer kept under `name` that is free.
inline at::Tensor empty(const char* name, at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (const int64_t size : sizes) numel *= size;
  if (numel * static_cast<int64_t>(options.dtype().itemsize()) < kReuseFrom) return at::empty(sizes, options);
  Kept& all = kept();
  std::lock_guard<std::mutex> guard(all.lock);
  std::vector<at::Tensor>& buffers = all.buffers[name];
  for (const at::Tensor& buffer : buffers) {
    if (fits(buffer, numel, options)) return buffer.view(sizes);
  }
  for (at::Tensor& buffer : buffers) {
    if (is_free(buffer)) {  // of another size or kind: its memory goes back, a buffer for this chunk takes its place
      buffer = at::empty({numel}, options);
      return buffer.view(sizes);
    }
  }
  at::Tensor buffer = at::empty({numel}, options);
  if (buffers.size() < kKept) buffers.push_back(buffer);
  return buffer.view(sizes);
}

// Give back the kept buffers that nothing holds; returns their bytes.
inline int64_t release() {
  Kept& all = kept();
  std::lock_guard<std::mutex> guard(all.lock);
  int64_t freed = 0;
  for (auto& [name, buffers] : all.buffers) {
    std::vector<at::Tensor> held;
    for (const at::Tensor& buffer : buffers) {
      if (is_free(buffer)) {
        freed += buffer.nbytes();
      } else {
        held.push_back(buffer);
      }
    }
    buffers = std::move(held);
  }
  return freed;
}

}  // namespace manntk_workspace
