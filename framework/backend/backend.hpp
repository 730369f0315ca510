#pragma once
#ifndef KERN_BUILDING_FRAMEWORK  // private to kern_core: see CMakeLists.txt (layering)
#error "framework/backend/backend.hpp is private to kern_core; include <kern/...> public headers instead (GEMM: <kern/gemm.hpp>)"
#endif
// Internal backend entry points. oneDNN and Eigen appear only in framework/backend/*.cpp.
#include <kern/backend.hpp>
#include <kern/tensor.hpp>

#include <cstdint>
#include <string>

namespace kern::backend {

/// True when the fast path should run for this dtype.
bool use_fast(DType dtype);

/// Counts one call of `p`'s `path` (see kern::backend::path_counts): fast kernels count
/// themselves in framework/backend/*.cpp, the ops count their reference loops.
void count_path(Primitive p, Path path);

/// A matrix operand: element (i, j) at data[i * row_stride + j * col_stride].
template <typename T>
struct MatRef {
  const T* data;
  int64_t rows, cols, row_stride, col_stride;
};

/// C[M, N] (row-major, leading dim ldc) = A @ B (+ beta * C).
void gemm_fast(const MatRef<float>& a, const MatRef<float>& b, float* c, int64_t ldc, float beta);
template <typename T>
void gemm_reference(const MatRef<T>& a, const MatRef<T>& b, T* c, int64_t ldc, T beta);

}  // namespace kern::backend

// ---- convolution (framework/backend/dnnl_conv.cpp): oneDNN, float32, plain contiguous
// buffers x: [N, C_in, H, W], w: [C_out, C_in/groups, kH, kW], y: [N, C_out, Ho, Wo].
namespace kern::backend {

struct ConvGeometry {
  int64_t N, C_in, H, W;
  int64_t C_out, kH, kW;
  int64_t Ho, Wo;
  int64_t stride[2], padding[2], dilation[2];  // dilation as in PyTorch (1 = dense)
  int64_t groups;
};

/// y = conv(x, w) (+ bias[C_out] when bias != nullptr)
void conv2d_forward_fast(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y);
/// gx = d<gy, conv(x, w)>/dx (every element of gx is written)
void conv2d_backward_input_fast(const ConvGeometry& g, const float* gy, const float* w, float* gx);
/// gw = d<gy, conv(x, w)>/dw (every element of gw is written)
void conv2d_backward_weight_fast(const ConvGeometry& g, const float* gy, const float* x, float* gw);

}  // namespace kern::backend

// ---- real FFT (framework/backend/fft.cpp): radix-2 + Bluestein, rows in parallel
namespace kern::backend {

/// Bin k's scale s_k is scale_end for k = 0 and (even n) k = n/2, scale_interior otherwise;
/// the op layer uses it to fold the adjoints' per-bin weights into the transforms.
/// x: [rows, len] contiguous, zero-padded / truncated to n -> out: [rows, n/2 + 1, 2],
/// out_k = s_k * sum_t x_t e^{-2 pi i k t/n} (torch.fft.rfft when s = 1).
template <typename T>
void rfft_rows(const T* x, int64_t rows, int64_t len, int64_t n, T* out, T scale_end, T scale_interior);
/// X: [rows, bins, 2] contiguous, zero-padded / truncated to n/2 + 1 bins, bin k times s_k
/// -> out: [rows, n] (1/n scaling, torch.fft.irfft when s = 1; imaginary parts of bin 0
/// and, for even n, bin n/2 are ignored).
template <typename T>
void irfft_rows(const T* X, int64_t rows, int64_t bins, int64_t n, T* out, T scale_end, T scale_interior);

}  // namespace kern::backend

// ---- softmax and layer norm forward (framework/backend/dnnl_norm.cpp): oneDNN, float32,
// plain contiguous buffers
namespace kern::backend {

/// x, y: [outer, n, inner]; (log_)softmax over the middle dim.
void softmax_fast(const float* x, float* y, int64_t outer, int64_t n, int64_t inner, bool log);
/// x, y: [rows, m], normalized over m (biased variance); weight, bias: [m] or nullptr.
void layer_norm_fast(const float* x, const float* weight, const float* bias, float* y, int64_t rows, int64_t m,
                     float eps);

}  // namespace kern::backend

// ---- pooling forward (framework/backend/dnnl_pool.cpp): oneDNN, float32, plain contiguous
// buffers x: [N, C, H, W], y: [N, C, Ho, Wo]. Windows start at o * stride - padding; Ho and
// Wo are the op's (PyTorch's, ceil_mode included) output sizes, the right / bottom padding
// follows from them.
namespace kern::backend {

struct PoolGeometry {
  int64_t N, C, H, W, Ho, Wo;
  int64_t kernel[2], stride[2], padding[2];
};

/// Max pooling with kern's indices: idx [N, C, Ho, Wo] gets the flat H*W index of each
/// window's first maximum (row-major window order). Returns false, having written nothing
/// the caller may use, when the input holds a NaN (kern propagates it, oneDNN skips it) or
/// oneDNN's workspace layout is not the expected one; the caller then runs its own loops.
bool max_pool2d_fast(const PoolGeometry& g, const float* x, float* y, int64_t* idx);
/// Average pooling; the divisor is the number of input elements in the window (exclude_pad)
/// or kernel[0] * kernel[1] (then every window must lie inside the padded input for
/// PyTorch's count_include_pad semantics; the caller checks).
void avg_pool2d_fast(const PoolGeometry& g, bool exclude_pad, const float* x, float* y);

}  // namespace kern::backend

// ---- bfloat16 products for autocast (framework/backend/dnnl_bf16.cpp, dnnl_conv.cpp):
// oneDNN with bf16 operands, float32 accumulation and float32 results.
namespace kern::backend {

/// C[M, N] (float32, leading dim ldc) = A @ B (+ beta * C), A and B bf16 with any strides
/// oneDNN's matmul accepts (every 2-D stride pair; the caller passes BLAS layouts).
void gemm_bf16(const MatRef<bf16>& a, const MatRef<bf16>& b, float* c, int64_t ldc, float beta);

/// Convolutions as the float32 ones above, with bf16 operands and float32 results
/// (bias float32).
void conv2d_forward_bf16(const ConvGeometry& g, const bf16* x, const bf16* w, const float* bias, float* y);
void conv2d_backward_input_bf16(const ConvGeometry& g, const bf16* gy, const bf16* w, float* gx);
void conv2d_backward_weight_bf16(const ConvGeometry& g, const bf16* gy, const bf16* x, float* gw);

/// The effective ISA and the implementation names oneDNN picks for a probe bf16 matmul and
/// convolution (kern::autocast_isa()).
std::string bf16_impl_info();
/// The implementation name of the bf16 convolution primitive for a geometry (forward).
std::string conv2d_bf16_impl(const ConvGeometry& g);

}  // namespace kern::backend
