// Elementwise work of one ARMIN cell step on the CPU, one pass per stage (manntk/fast/armin_fused.py);
// the row kernels are in armin_rows.h.
//
// The products cover [x_t, h, r] (and [x_t, h^g, r^g]) without the bias, which is added here.
// ATen and the operator registry only, not torch/extension.h (the Python bindings and the
// whole C++ frontend): the build takes ~10 s instead of ~40 on a 2-core machine. The
// kernels are operators of the namespace manntk_armin_fused, called as torch.ops.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "armin_rows.h"
#include "products.h"
#include "workspace.h"

#include <optional>

namespace {

using namespace manntk_armin;

// 2-d CPU tensors whose rows are contiguous; rows may be apart (column slices of a wider
// buffer), so each tensor's row pitch is its stride(0).
void check(const at::Tensor& t, const char* name, int64_t width) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 2 && (t.stride(1) == 1 || t.size(1) <= 1), name,
              ": expected a 2-d CPU tensor with contiguous rows");
  TORCH_CHECK(t.size(1) == width, name, ": expected width ", width, ", got ", t.size(1));
}

// `out` when given (checked: rows x width, the dtype of `like`), else a new contiguous tensor.
at::Tensor output(const std::optional<at::Tensor>& out, const at::Tensor& like, int64_t width, const char* name) {
  if (!out.has_value()) return at::empty({like.size(0), width}, like.options());
  check(*out, name, width);
  TORCH_CHECK(out->size(0) == like.size(0) && out->scalar_type() == like.scalar_type(), name, ": expected ", like.size(0),
              " rows of ", like.scalar_type());
  return *out;
}

void check_bias(const at::Tensor& t, const char* name, int64_t width) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.is_contiguous(), name, ": expected a contiguous 1-d CPU tensor");
  TORCH_CHECK(t.size(0) == width, name, ": expected ", width, " values, got ", t.size(0));
}

// sg = sigmoid(ig + bias); gated = [sg_h * h, sg_r * r]
std::vector<at::Tensor> gates_in(const at::Tensor& ig, const at::Tensor& bias, const at::Tensor& h,
                                    const at::Tensor& r, const std::optional<at::Tensor>& gated_out) {
  const int64_t B = ig.size(0), dh = h.size(1), dr = r.size(1), W = dh + dr;
  check(ig, "ig", W);
  check_bias(bias, "ig bias", W);
  check(h, "h", dh);
  check(r, "r", dr);
  auto sg = at::empty({B, W}, ig.options());
  auto gated = output(gated_out, ig, W, "gated");
  const int64_t s_ig = ig.stride(0), s_h = h.stride(0), s_r = r.stride(0), s_gt = gated.stride(0);
  AT_DISPATCH_FLOATING_TYPES(ig.scalar_type(), "armin_gates_in", [&] {
    const scalar_t *pig = ig.data_ptr<scalar_t>(), *pb = bias.data_ptr<scalar_t>();
    const scalar_t *ph = h.data_ptr<scalar_t>(), *pr = r.data_ptr<scalar_t>();
    scalar_t *psg = sg.data_ptr<scalar_t>(), *pgt = gated.data_ptr<scalar_t>();
    at::parallel_for(0, B, 16, [=](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        gates_in_row(pig + b * s_ig, pb, ph + b * s_h, pr + b * s_r, psg + b * W, pgt + b * s_gt, dh, dr);
      }
    });
  });
  return {sg, gated};
}

// with [i, f, g, o_h, o_r] = go + bias:
// act = [sigmoid(i), sigmoid(f + forget_bias), tanh(g), sigmoid(o_h), sigmoid(o_r)];
// c = f h + i g; h_new = tanh(c) if squash else c; out = [o_h tanh(h_new), o_r tanh(r)]
std::vector<at::Tensor> cell_out(const at::Tensor& go, const at::Tensor& bias, const at::Tensor& h,
                                    const at::Tensor& r, double forget_bias, bool squash, bool read_output) {
  const int64_t B = go.size(0), dh = h.size(1), dr = r.size(1);
  const int64_t G = 4 * dh + (read_output ? dr : 0), O = dh + (read_output ? dr : 0);
  check(go, "go", G);
  check_bias(bias, "go bias", G);
  check(h, "h", dh);
  check(r, "r", dr);
  auto act = at::empty({B, G}, go.options());
  auto h_new = at::empty({B, dh}, go.options());
  auto out = at::empty({B, O}, go.options());
  const int64_t s_go = go.stride(0), s_h = h.stride(0), s_r = r.stride(0);
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "armin_cell_out", [&] {
    const scalar_t fb = static_cast<scalar_t>(forget_bias);
    const scalar_t *pgo = go.data_ptr<scalar_t>(), *pb = bias.data_ptr<scalar_t>(), *ph = h.data_ptr<scalar_t>(), *pr = r.data_ptr<scalar_t>();
    scalar_t *pa = act.data_ptr<scalar_t>(), *phn = h_new.data_ptr<scalar_t>(), *po = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, 16, [=](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        cell_out_row(pgo + b * s_go, pb, ph + b * s_h, pr + b * s_r, pa + b * G, phn + b * dh, po + b * O, dh, dr, fb, squash, read_output);
      }
    });
  });
  return {act, h_new, out};
}

// The backward of cell_out: d_go (gate pre-activations), and the parts of dh and dr that do
// not go through the gated product, written into one [B, d_h + d_r] buffer d_hr (which may
// be the [dh, dr] columns of the caller's [dx, dh, dr]).
std::vector<at::Tensor> cell_out_backward(const at::Tensor& d_out, const at::Tensor& d_hnew, const at::Tensor& act,
                                             const at::Tensor& h, const at::Tensor& r, const at::Tensor& h_new,
                                             bool squash, bool read_output, const std::optional<at::Tensor>& d_go_out,
                                             const std::optional<at::Tensor>& d_hr_out) {
  const int64_t B = act.size(0), dh = h.size(1), dr = r.size(1);
  const int64_t G = 4 * dh + (read_output ? dr : 0), O = dh + (read_output ? dr : 0);
  check(d_out, "d_out", O);
  check(d_hnew, "d_hnew", dh);
  check(act, "act", G);
  check(h, "h", dh);
  check(r, "r", dr);
  check(h_new, "h_new", dh);
  auto d_go = output(d_go_out, act, G, "d_go");
  auto d_hr = output(d_hr_out, act, dh + dr, "d_hr");
  const int64_t s_do = d_out.stride(0), s_dh = d_hnew.stride(0), s_a = act.stride(0), s_h = h.stride(0), s_r = r.stride(0),
                s_hn = h_new.stride(0), s_dg = d_go.stride(0), s_dhr = d_hr.stride(0);
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "armin_cell_out_backward", [&] {
    const scalar_t *pdo = d_out.data_ptr<scalar_t>(), *pdh = d_hnew.data_ptr<scalar_t>(), *pa = act.data_ptr<scalar_t>();
    const scalar_t *ph = h.data_ptr<scalar_t>(), *pr = r.data_ptr<scalar_t>(), *phn = h_new.data_ptr<scalar_t>();
    scalar_t *pdg = d_go.data_ptr<scalar_t>(), *pdhr = d_hr.data_ptr<scalar_t>();
    at::parallel_for(0, B, 16, [=](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        cell_out_backward_row(pdo + b * s_do, pdh + b * s_dh, pa + b * s_a, ph + b * s_h, pr + b * s_r, phn + b * s_hn,
                              pdg + b * s_dg, pdhr + b * s_dhr, dh, dr, squash, read_output);
      }
    });
  });
  return {d_go, d_hr};
}

// The backward of gates_in given d_gated: returns d_ig and adds d_gated's direct part to d_hr
// in place (d_hr[:, :d_h] += d_gated_h * sg_h; d_hr[:, d_h:] += d_gated_r * sg_r).
at::Tensor gates_in_backward(const at::Tensor& d_gated, const at::Tensor& sg, const at::Tensor& h,
                                const at::Tensor& r, at::Tensor d_hr, const std::optional<at::Tensor>& d_ig_out) {
  const int64_t B = sg.size(0), dh = h.size(1), dr = r.size(1), W = dh + dr;
  check(d_gated, "d_gated", W);
  check(sg, "sg", W);
  check(h, "h", dh);
  check(r, "r", dr);
  check(d_hr, "d_hr", W);
  auto d_ig = output(d_ig_out, sg, W, "d_ig");
  const int64_t s_dg = d_gated.stride(0), s_s = sg.stride(0), s_h = h.stride(0), s_r = r.stride(0), s_di = d_ig.stride(0),
                s_dhr = d_hr.stride(0);
  AT_DISPATCH_FLOATING_TYPES(sg.scalar_type(), "armin_gates_in_backward", [&] {
    const scalar_t *pdg = d_gated.data_ptr<scalar_t>(), *ps = sg.data_ptr<scalar_t>();
    const scalar_t *ph = h.data_ptr<scalar_t>(), *pr = r.data_ptr<scalar_t>();
    scalar_t *pdi = d_ig.data_ptr<scalar_t>(), *pdhr = d_hr.data_ptr<scalar_t>();
    at::parallel_for(0, B, 16, [=](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        gates_in_backward_row(pdg + b * s_dg, ps + b * s_s, ph + b * s_h, pr + b * s_r, pdi + b * s_di, pdhr + b * s_dhr, dh, dr);
      }
    });
  });
  return d_ig;
}

void set_onednn_products(bool use) { manntk_products::onednn() = use; }

bool onednn_products() { return manntk_products::onednn(); }

bool onednn_matmul_available() { return manntk_products::onednn_matmul() != nullptr; }

int64_t onednn_product_count() { return manntk_products::onednn_count(); }

int64_t release_workspace() { return manntk_workspace::release(); }

}  // namespace

TORCH_LIBRARY(manntk_armin_fused, m) {
  // whether the chunk kernels' large float32 products go through oneDNN (products.h)
  m.def("set_onednn_products(bool use) -> ()", &set_onednn_products);
  m.def("onednn_products() -> bool", &onednn_products);
  m.def("onednn_matmul_available() -> bool", &onednn_matmul_available);  // torch's oneDNN matmul found
  m.def("onednn_product_count() -> int", &onednn_product_count);  // products oneDNN has run
  // the chunk kernels' kept buffers that nothing holds given back (workspace.h); returns their bytes
  m.def("release_workspace() -> int", &release_workspace);
  // sigmoid of W_ig's output and the gated [h, r] (into gated_out when given)
  m.def("gates_in(Tensor ig, Tensor bias, Tensor h, Tensor r, Tensor? gated_out=None) -> Tensor[]", &gates_in);
  // the ARMIN gates, h_t and o_t from W_go's output
  m.def("cell_out(Tensor go, Tensor bias, Tensor h, Tensor r, float forget_bias, bool squash, bool read_output) -> Tensor[]",
        &cell_out);
  // backward of cell_out (into d_go_out and d_hr_out when given)
  m.def("cell_out_backward(Tensor d_out, Tensor d_hnew, Tensor act, Tensor h, Tensor r, Tensor h_new, bool squash, "
        "bool read_output, Tensor? d_go_out=None, Tensor? d_hr_out=None) -> Tensor[]",
        &cell_out_backward);
  // backward of gates_in (d_ig into d_ig_out when given)
  m.def("gates_in_backward(Tensor d_gated, Tensor sg, Tensor h, Tensor r, Tensor d_hr, Tensor? d_ig_out=None) -> Tensor",
        &gates_in_backward);
}
