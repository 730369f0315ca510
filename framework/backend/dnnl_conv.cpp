// Convolution on oneDNN 2.6 (float32, and bf16 operands with float32 results for autocast): forward, backward-data and backward-weights, the
// fast path of framework/ops/conv.cpp. The caller's buffers are plain nchw / oihw (goihw
// when groups > 1); each primitive picks its own layouts (format_tag::any) and we reorder
// in and out when they differ. Primitives and their reorders are built once per
// (kind, shapes, params) and cached.
#include <dnnl.hpp>

#include <fmt/format.h>

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend.hpp"

namespace kern::backend {

namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

dnnl::engine& cpu_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
// One in-order CPU stream per thread: a stream is not meant to be shared across threads.
dnnl::stream& cpu_stream() {
  thread_local dnnl::stream s(cpu_engine());
  return s;
}

// An argument of a primitive: the caller's plain layout and the primitive's chosen one, with
// the reorder between them when they differ (user -> primitive for inputs, back for outputs).
struct Operand {
  int arg = 0;
  memory::desc user, prim;
  bool same = true;
  dnnl::reorder convert;
};

Operand make_operand(int arg, const memory::desc& user, const memory::desc& prim, bool is_output) {
  Operand o;
  o.arg = arg;
  o.user = user;
  o.prim = prim;
  o.same = user == prim;
  if (!o.same) {
    auto& e = cpu_engine();
    o.convert = is_output ? dnnl::reorder(dnnl::reorder::primitive_desc(e, prim, e, user))
                          : dnnl::reorder(dnnl::reorder::primitive_desc(e, user, e, prim));
  }
  return o;
}

// A cached primitive: its inputs, its single output and its scratchpad size.
struct Entry {
  dnnl::primitive prim;
  std::vector<Operand> inputs;
  Operand output;
  memory::desc scratchpad;
  std::string impl;  // oneDNN's implementation name, e.g. "brg:avx512_core_bf16"
};

// The plain descriptors and spatial params of a geometry.
struct Descs {
  memory::desc src, wei, bias, dst;          // plain layouts of the caller's buffers
  memory::desc src_any, wei_any, dst_any;    // format_tag::any
  memory::dims strides, dilates, pad_l, pad_r;
};

// src / wei / dst: the data types of the source, weights and destination tensors (diff_src,
// diff_weights and diff_dst in the backward kinds): all f32, or bf16 operands with an f32
// result under autocast.
Descs make_descs(const ConvGeometry& g, dt src_t, dt wei_t, dt dst_t) {
  Descs d;
  const memory::dims src{g.N, g.C_in, g.H, g.W}, dst{g.N, g.C_out, g.Ho, g.Wo};
  memory::dims wei;
  tag wtag;
  if (g.groups == 1) {
    wei = {g.C_out, g.C_in, g.kH, g.kW};
    wtag = tag::oihw;
  } else {
    // [C_out, C_in/G, kH, kW] is the same memory as goihw [G, C_out/G, C_in/G, kH, kW].
    wei = {g.groups, g.C_out / g.groups, g.C_in / g.groups, g.kH, g.kW};
    wtag = tag::goihw;
  }
  d.src = memory::desc(src, src_t, tag::nchw);
  d.wei = memory::desc(wei, wei_t, wtag);
  d.dst = memory::desc(dst, dst_t, tag::nchw);
  d.bias = memory::desc({g.C_out}, dt::f32, tag::x);
  d.src_any = memory::desc(src, src_t, tag::any);
  d.wei_any = memory::desc(wei, wei_t, tag::any);
  d.dst_any = memory::desc(dst, dst_t, tag::any);
  d.strides = {g.stride[0], g.stride[1]};
  d.dilates = {g.dilation[0] - 1, g.dilation[1] - 1};  // oneDNN counts the gaps: dense = 0
  // Symmetric padding; oneDNN accepts a right pad larger than needed (floor division).
  d.pad_l = {g.padding[0], g.padding[1]};
  d.pad_r = {g.padding[0], g.padding[1]};
  return d;
}

dnnl::primitive_attr user_scratchpad() {
  // A scratchpad we pass in per call makes concurrent execution of one primitive safe.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc forward_pd(const Descs& d, bool with_bias) {
  dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                       d.src_any, d.wei_any, with_bias ? d.bias : memory::desc(), d.dst_any,
                                       d.strides, d.dilates, d.pad_l, d.pad_r);
  return dnnl::convolution_forward::primitive_desc(desc, user_scratchpad(), cpu_engine());
}

enum class Kind { Forward, ForwardBias, BackwardData, BackwardWeights };

std::shared_ptr<Entry> build(Kind kind, const ConvGeometry& g, bool bf16) {
  // bf16: the operands are bf16 and the result f32 (diff_src / diff_weights in backward).
  const dt op_t = bf16 ? dt::bf16 : dt::f32;
  const bool is_fwd = kind == Kind::Forward || kind == Kind::ForwardBias;
  const Descs d = is_fwd                           ? make_descs(g, op_t, op_t, dt::f32)
                  : kind == Kind::BackwardData     ? make_descs(g, dt::f32, op_t, op_t)
                                                   : make_descs(g, op_t, dt::f32, op_t);
  auto e = std::make_shared<Entry>();
  // The backward kinds take the forward's descriptor as a hint: all operands in op_t.
  auto fwd = is_fwd ? forward_pd(d, kind == Kind::ForwardBias) : forward_pd(make_descs(g, op_t, op_t, op_t), false);
  e->impl = fwd.impl_info_str();
  if (is_fwd) {
    e->prim = dnnl::convolution_forward(fwd);
    e->inputs.push_back(make_operand(DNNL_ARG_SRC, d.src, fwd.src_desc(), false));
    e->inputs.push_back(make_operand(DNNL_ARG_WEIGHTS, d.wei, fwd.weights_desc(), false));
    if (kind == Kind::ForwardBias) e->inputs.push_back(make_operand(DNNL_ARG_BIAS, d.bias, fwd.bias_desc(), false));
    e->output = make_operand(DNNL_ARG_DST, d.dst, fwd.dst_desc(), true);
    e->scratchpad = fwd.scratchpad_desc();
  } else if (kind == Kind::BackwardData) {
    dnnl::convolution_backward_data::desc desc(dnnl::algorithm::convolution_direct, d.src_any, d.wei_any,
                                               d.dst_any, d.strides, d.dilates, d.pad_l, d.pad_r);
    dnnl::convolution_backward_data::primitive_desc pd(desc, user_scratchpad(), cpu_engine(), fwd);
    e->prim = dnnl::convolution_backward_data(pd);
    e->inputs.push_back(make_operand(DNNL_ARG_DIFF_DST, d.dst, pd.diff_dst_desc(), false));
    e->inputs.push_back(make_operand(DNNL_ARG_WEIGHTS, d.wei, pd.weights_desc(), false));
    e->output = make_operand(DNNL_ARG_DIFF_SRC, d.src, pd.diff_src_desc(), true);
    e->scratchpad = pd.scratchpad_desc();
    e->impl = pd.impl_info_str();
  } else {
    dnnl::convolution_backward_weights::desc desc(dnnl::algorithm::convolution_direct, d.src_any, d.wei_any,
                                                  d.dst_any, d.strides, d.dilates, d.pad_l, d.pad_r);
    dnnl::convolution_backward_weights::primitive_desc pd(desc, user_scratchpad(), cpu_engine(), fwd);
    e->prim = dnnl::convolution_backward_weights(pd);
    e->inputs.push_back(make_operand(DNNL_ARG_DIFF_DST, d.dst, pd.diff_dst_desc(), false));
    e->inputs.push_back(make_operand(DNNL_ARG_SRC, d.src, pd.src_desc(), false));
    e->output = make_operand(DNNL_ARG_DIFF_WEIGHTS, d.wei, pd.diff_weights_desc(), true);
    e->scratchpad = pd.scratchpad_desc();
    e->impl = pd.impl_info_str();
  }
  return e;
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Forward: return "conv2d forward";
    case Kind::ForwardBias: return "conv2d forward (bias)";
    case Kind::BackwardData: return "conv2d_backward_input";
    case Kind::BackwardWeights: return "conv2d_backward_weight";
  }
  return "conv2d";
}

std::string describe(Kind kind, const ConvGeometry& g, bool bf16 = false) {
  return fmt::format("{}{}: x [{}, {}, {}, {}], w [{}, {}, {}, {}], y [{}, {}, {}, {}], stride ({}, {}), "
                     "padding ({}, {}), dilation ({}, {}), groups {}",
                     kind_name(kind), bf16 ? " (bf16)" : "", g.N, g.C_in, g.H, g.W, g.C_out, g.C_in / g.groups, g.kH, g.kW, g.N, g.C_out,
                     g.Ho, g.Wo, g.stride[0], g.stride[1], g.padding[0], g.padding[1], g.dilation[0],
                     g.dilation[1], g.groups);
}

// The cache key is the full description: every shape and param that shapes the primitive.
std::shared_ptr<Entry> lookup(Kind kind, const ConvGeometry& g, bool bf16) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::shared_ptr<Entry>> cache;
  const std::string key = describe(kind, g, bf16);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  std::shared_ptr<Entry> e;
  try {
    e = build(kind, g, bf16);
  } catch (const dnnl::error& err) {
    throw Error(fmt::format("{}: oneDNN could not create the primitive ({})", key, err.what()));
  }
  // Bounded: a workload with ever-changing shapes starts over instead of growing without
  // limit (callers hold their entry by shared_ptr, so clearing is safe).
  if (cache.size() >= 1024) cache.clear();
  cache.emplace(key, e);
  return e;
}

// Runs a cached primitive on the caller's buffers (inputs in Entry order).
void run(Kind kind, const ConvGeometry& g, std::vector<const void*> in, void* out, bool bf16 = false) {
  count_path(Primitive::Conv2d, Path::Fast);
  auto e = lookup(kind, g, bf16);
  auto& eng = cpu_engine();
  auto& s = cpu_stream();
  try {
    std::unordered_map<int, memory> args;
    for (size_t i = 0; i < e->inputs.size(); ++i) {
      const Operand& o = e->inputs[i];
      memory user(o.user, eng, const_cast<void*>(in[i]));
      if (o.same) {
        args.emplace(o.arg, user);
      } else {
        memory prim(o.prim, eng);
        o.convert.execute(s, user, prim);
        args.emplace(o.arg, prim);
      }
    }
    memory user_out(e->output.user, eng, out);
    memory prim_out = e->output.same ? user_out : memory(e->output.prim, eng);
    args.emplace(e->output.arg, prim_out);
    args.emplace(DNNL_ARG_SCRATCHPAD, memory(e->scratchpad, eng));
    e->prim.execute(s, args);
    if (!e->output.same) e->output.convert.execute(s, prim_out, user_out);
    s.wait();
  } catch (const dnnl::error& err) {
    throw Error(fmt::format("{}: oneDNN execution failed ({})", describe(kind, g, bf16), err.what()));
  }
}

}  // namespace

void conv2d_forward_fast(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y) {
  if (bias) run(Kind::ForwardBias, g, {x, w, bias}, y);
  else run(Kind::Forward, g, {x, w}, y);
}

void conv2d_backward_input_fast(const ConvGeometry& g, const float* gy, const float* w, float* gx) {
  run(Kind::BackwardData, g, {gy, w}, gx);
}

void conv2d_backward_weight_fast(const ConvGeometry& g, const float* gy, const float* x, float* gw) {
  run(Kind::BackwardWeights, g, {gy, x}, gw);
}

void conv2d_forward_bf16(const ConvGeometry& g, const bf16* x, const bf16* w, const float* bias, float* y) {
  if (bias) run(Kind::ForwardBias, g, {x, w, bias}, y, true);
  else run(Kind::Forward, g, {x, w}, y, true);
}

void conv2d_backward_input_bf16(const ConvGeometry& g, const bf16* gy, const bf16* w, float* gx) {
  run(Kind::BackwardData, g, {gy, w}, gx, true);
}

void conv2d_backward_weight_bf16(const ConvGeometry& g, const bf16* gy, const bf16* x, float* gw) {
  run(Kind::BackwardWeights, g, {gy, x}, gw, true);
}

std::string conv2d_bf16_impl(const ConvGeometry& g) { return lookup(Kind::Forward, g, true)->impl; }

}  // namespace kern::backend
