#pragma once
// Internal backend entry points. oneDNN and Eigen appear only in framework/backend/*.cpp.
#include <kern/backend.hpp>
#include <kern/tensor.hpp>

#include <cstdint>

namespace kern::backend {

/// True when the fast path should run for this dtype.
bool use_fast(DType dtype);

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

/// x: [rows, n] contiguous -> out: [rows, n/2 + 1, 2] (unnormalized, like torch.fft.rfft).
template <typename T>
void rfft_rows(const T* x, int64_t rows, int64_t n, T* out);
/// X: [rows, n/2 + 1, 2] contiguous -> out: [rows, n] (1/n scaling, like torch.fft.irfft;
/// imaginary parts of bin 0 and, for even n, bin n/2 are ignored).
template <typename T>
void irfft_rows(const T* X, int64_t rows, int64_t n, T* out);

}  // namespace kern::backend
